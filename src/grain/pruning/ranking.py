"""Global ranking: remove the least important units until the removed parameters reach a budget."""

from __future__ import annotations

import torch

from grain.models.masks import EncoderShape


def unit_costs(shape: EncoderShape) -> dict[str, int]:
    """Parameters removed with one unit: QK = Q row + K row + 2 biases; VO = V row + bias + O column;
    FFN = W1 row + bias + W2 column."""
    h = shape.hidden_size
    return {"qk": 2 * h + 2, "vo": 2 * h + 1, "ffn": 2 * h + 1}


def encoder_linear_params(shape: EncoderShape) -> int:
    """All parameters of the encoder's linear layers (Q, K, V, O, W1, W2 with biases)."""
    h, i = shape.hidden_size, shape.intermediate_size
    return shape.num_layers * (4 * h * h + 4 * h + 2 * h * i + i + h)


def kept_linear_params(masks: dict[str, torch.Tensor], shape: EncoderShape) -> int:
    """Encoder linear parameters left by the masks; output biases of W_O and W_2 always stay."""
    costs = unit_costs(shape)
    kept_units = sum(int(masks[kind].sum().item()) * cost for kind, cost in costs.items())
    return kept_units + shape.num_layers * 2 * shape.hidden_size


def select_lowest(scores: torch.Tensor, costs: torch.Tensor, budget: float) -> torch.Tensor:
    """Boolean [items]: the lowest-scoring items whose summed cost first reaches `budget`.

    Items already removed must carry score -inf, so they are counted first and stay removed.
    The selection overshoots the budget by less than the cost of one item.
    """
    remove = torch.zeros_like(scores, dtype=torch.bool)
    if budget <= 0:
        return remove
    order = torch.argsort(scores, stable=True)
    cumulative = torch.cumsum(costs[order].double(), dim=0)
    count = int(torch.searchsorted(cumulative, torch.tensor([budget], dtype=cumulative.dtype)).item()) + 1
    remove[order[: min(count, len(order))]] = True
    return remove

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
    """Encoder linear parameters left by the masks; output biases of W_O and W_2 always stay.

    Reads the masks on the host (one sync): for reporting, not for a training step's hot path.
    """
    costs = unit_costs(shape)
    kept_units = sum(masks[kind].count_nonzero() * cost for kind, cost in costs.items())  # int64
    return int(kept_units) + shape.num_layers * 2 * shape.hidden_size


def select_lowest(scores: torch.Tensor, costs: torch.Tensor, budget: float) -> torch.Tensor:
    """Boolean [items]: the lowest-scoring items whose summed cost first reaches `budget`.

    scores: [items]; costs: [items], parameters per item; budget: parameters to remove.
    Items already removed must carry score -inf, so they are counted first and stay removed.
    The selection overshoots the budget by less than the cost of one item: in increasing score
    order, an item goes while the cost of the items before it is still below the budget. Computed
    on the scores' device with no host sync (the count of removed items is never read back).
    """
    order = torch.argsort(scores, stable=True)
    sorted_costs = costs[order].double()  # float64: exact integer sums up to 2**53 parameters
    cost_before = torch.cumsum(sorted_costs, dim=0) - sorted_costs
    remove = torch.zeros_like(scores, dtype=torch.bool)
    remove[order] = cost_before < budget
    return remove

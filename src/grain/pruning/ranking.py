"""Global ranking: remove the least important units until the removed parameters reach a budget.

The selection is the official one (airaria/GRAIN, FineISPruner.generate_mask with is_global): all
QK, VO and FFN units of all layers sorted together by importance, each weighing its parameters,
and the longest prefix whose summed parameters stay below `sparsity * prunable_params` removed.
Two settings differ in one point, the QK units of heads left with no VO unit:
- `official`: they are removed on top of the budget, as FineISPruner does (it overshoots: a
  one-shot 0.9 on MiniLM removed every head, 0.98);
- `grain` (default): removing a head's last VO unit costs its remaining QK units too, so the
  achieved sparsity stays within one unit of the target (`select_units`).
"""

from __future__ import annotations

import torch

from grain.models.masks import EncoderShape

BUDGET_MODES = ("grain", "official")
UNIT_ORDER = ("ffn", "qk", "vo")  # concatenation order of FineISPruner.generate_mask
TIE_SEED = 0  # equal scores are ranked in the random order this seed draws (`neutral_order`)


def unit_costs(shape: EncoderShape) -> dict[str, int]:
    """Parameters removed with one unit: QK = Q row + K row + 2 biases; VO = V row + bias + O column;
    FFN = W1 row + bias + W2 column (FineISPruner's qk/vo/ffn_unit_size). A rotary QK unit is two Q and
    two K rows (`EncoderShape.qk_unit_width`); a gated FFN unit two W1 rows (input and gate); without
    biases (ModernBERT) the bias terms are 0."""
    h, b = shape.hidden_size, int(shape.bias)
    ffn_rows = 2 if shape.gated_ffn else 1
    return {"qk": shape.qk_unit_width * 2 * (h + b), "vo": 2 * h + b, "ffn": ffn_rows * (h + b) + h}


def prunable_params(shape: EncoderShape) -> int:
    """Parameters of all prunable units: the denominator of the budget (FineISPruner's total_params).

    The output biases of W_O and W_2 belong to no unit and are never pruned, so they are not in it.
    """
    costs = unit_costs(shape)
    return shape.num_layers * sum(costs[kind] * n for kind, n in shape.units_per_layer.items())


def encoder_linear_params(shape: EncoderShape) -> int:
    """All parameters of the encoder's linear layers (Q, K, V, O, W1, W2 with biases): the prunable
    units' and the output biases of W_O and W_2 (for BERT 4h^2 + 4h + 2hi + i + h per layer)."""
    return prunable_params(shape) + shape.num_layers * 2 * shape.hidden_size * int(shape.bias)


def kept_linear_params(masks: dict[str, torch.Tensor], shape: EncoderShape) -> int:
    """Encoder linear parameters left by the masks; output biases of W_O and W_2 always stay.

    Reads the masks on the host (one sync): for reporting, not for a training step's hot path.
    """
    costs = unit_costs(shape)
    kept_units = sum(masks[kind].count_nonzero() * cost for kind, cost in costs.items())  # int64
    return int(kept_units) + shape.num_layers * 2 * shape.hidden_size * int(shape.bias)


def removed_unit_params(masks: dict[str, torch.Tensor], shape: EncoderShape) -> int:
    """Parameters of the removed units (what the budget counts). Reads the masks on the host."""
    costs = unit_costs(shape)
    return int(sum((masks[kind] == 0).sum() * cost for kind, cost in costs.items()))


def neutral_order(scores: torch.Tensor, seed: int = TIE_SEED) -> torch.Tensor:
    """Long [items]: indices of `scores` in increasing order, equal scores in a seeded random order.

    A stable sort would put equal scores in concatenation order (a whole kind of unit first); the
    permutation (drawn on the CPU, so every rank and device type draws the same) makes ties neutral
    across QK, VO and FFN units and across layers. No host sync.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    perm = torch.randperm(scores.numel(), generator=generator, device="cpu").to(scores.device)
    return perm[torch.argsort(scores[perm], stable=True)]


def select_lowest(scores: torch.Tensor, costs: torch.Tensor, budget: float | torch.Tensor) -> torch.Tensor:
    """Boolean [items]: the longest run of lowest-scoring items whose summed cost stays below `budget`.

    scores: [items]; costs: [items], parameters per item; budget: parameters to remove (a float, or
    a 0-dim tensor on the scores' device).
    As airaria/GRAIN FineISPruner.generate_mask: `searchsorted(cumsum(sorted costs), budget)` items
    go, i.e. an item goes when the cost up to and including it is below the budget (the removed
    cost undershoots the budget by less than one item). Items already removed must carry score
    -inf, so they are counted first. Ties in a seeded order (`neutral_order`). Exact integer sums
    (float64) where the official normalizes in float32. On the scores' device, no host sync.
    """
    order = neutral_order(scores)
    cost_through = torch.cumsum(costs[order].double(), dim=0)  # float64: exact up to 2**53
    remove = torch.zeros_like(scores, dtype=torch.bool)
    remove[order] = cost_through < budget
    return remove


def select_units(
    scores: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    shape: EncoderShape,
    budget: float,
    mode: str = "grain",
    select=select_lowest,
) -> dict[str, torch.Tensor]:
    """Units to remove now, {kind: bool [layers, units]}, before the QK units of emptied heads.

    scores/masks: {"qk": [layers, qk units], "vo": [layers, hidden], "ffn": [layers, intermediate]}; budget: parameters
    of prunable units to have removed in all (already removed units included); select: the prefix
    rule, `select_lowest` (a parameter so that a caller's own reference to it is the one used).

    mode "official": `select_lowest` over all units (FineISPruner); the caller then removes the QK
    units of heads left without VO units, on top of the budget.
    mode "grain": the same order, but a head's QK units that come after its last VO unit in the
    order are charged to that VO unit (removing it removes them), so the prefix counts them:
      1. the longest prefix whose charged cost stays below the budget goes;
      2. if the unit that stopped it would empty a head (too dear with its QK units), the units
         after it that empty no head fill the rest of the budget, in order, by the same rule.
    The removed cost (QK of emptied heads included) then stays below the budget by less than one
    unit, for any scores. Where no head is emptied both modes select the same units.
    On the scores' device, no host sync.
    """
    if mode not in BUDGET_MODES:
        raise ValueError(f"pruner.budget={mode!r}; expected one of {BUDGET_MODES}")
    costs = unit_costs(shape)
    device = masks["qk"].device
    flat_scores = torch.cat([
        scores[k].to(device).float().masked_fill(masks[k] == 0, float("-inf")).flatten() for k in UNIT_ORDER
    ])
    sizes = [masks[k].numel() for k in UNIT_ORDER]
    plain = torch.cat([torch.full((n,), float(costs[k]), device=device, dtype=torch.float64) for k, n in zip(UNIT_ORDER, sizes)])
    if mode == "official":
        remove = select(flat_scores, plain, budget)
    else:
        remove = _select_charging_heads(flat_scores, plain, sizes, shape, budget, select)
    return dict(zip(UNIT_ORDER, (part.view_as(masks[k]) for k, part in zip(UNIT_ORDER, remove.split(sizes)))))


def _select_charging_heads(flat_scores, plain, sizes, shape: EncoderShape, budget: float, select) -> torch.Tensor:
    """mode "grain" of `select_units` on flat [ffn | qk | vo] items; plain: float64 costs per item."""
    device = flat_scores.device
    n_ffn, n_qk, _ = sizes
    n = flat_scores.numel()
    order = neutral_order(flat_scores)                          # the order `select` sorts in
    position = torch.empty_like(order)
    position[order] = torch.arange(n, device=device)
    qk_head = torch.arange(n_qk, device=device) // shape.qk_units_per_head  # QK unit -> layer * heads + head
    vo_head = torch.arange(n - n_ffn - n_qk, device=device) // shape.head_dim  # VO unit -> the same
    qk, vo = slice(n_ffn, n_ffn + n_qk), slice(n_ffn + n_qk, n)
    heads = shape.num_layers * shape.num_heads
    last_vo = torch.full((heads,), -1, dtype=order.dtype, device=device).scatter_reduce(
        0, vo_head, position[vo], reduce="amax", include_self=True
    )
    charged_qk = position[qk] > last_vo[qk_head]                # QK units that go with their head's last VO
    extra = torch.zeros(heads, dtype=torch.float64, device=device).index_add_(0, qk_head, plain[qk] * charged_qk)
    is_last_vo = position[vo] == last_vo[vo_head]
    charged = plain.clone()
    charged[qk] = plain[qk].masked_fill(charged_qk, 0.0)
    charged[vo] += extra[vo_head] * is_last_vo
    # 1. the prefix under the budget, charged costs (all >= 0, so the selection is a prefix)
    first = select(flat_scores, charged, budget)
    # 2. if the unit that stopped it empties a head, units that empty none fill the rest
    empties = torch.zeros(n, dtype=torch.bool, device=device)
    empties[vo] = is_last_vo & (extra[vo_head] > 0)
    stopper = first.sum().clamp(max=n - 1)                      # its index in the order, on the device
    stopped_by_head = empties[order].gather(0, stopper.view(1)) & ~first.all()
    head_emptied = torch.zeros(heads, dtype=torch.bool, device=device).scatter_reduce(
        0, vo_head, first[vo] & is_last_vo, reduce="amax"
    )
    skip = empties.clone()                                      # last VO units stay in step 2, and
    skip[qk] = charged_qk & head_emptied[qk_head]               # QK units of emptied heads go anyway
    skip |= first
    gap = budget - (charged * first).sum()
    fill = select(flat_scores, plain.masked_fill(skip, 0.0), gap) & ~skip & stopped_by_head
    return first | fill

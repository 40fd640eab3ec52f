"""Latency-aware selection: remove the units that lose the least importance per millisecond saved.

GRAIN as published ranks units by importance and charges each its parameter count. Here each unit
is charged its marginal latency under a measured latency model of the compact model (see
`grain.bench.latency_model`; any object with its `head_cost`, `ffn_cost`, `attention_base_ms`,
`attention_empty_ms` and `predict_masks` works), given the structure left so far:

- a QK unit of a head with QK width q and VO width v: head(q, v) - head(q - 1, v);
- a VO unit: head(q, v) - head(q, v - 1); the head's last VO unit takes the head with it, so it is
  charged head(q, 1) (the head's fixed cost, charged once, when its last unit goes) and its loss
  of importance includes the head's remaining QK units, which go with it; if it is the layer's last
  head, the emptied attention sub-layer frees attention_base - attention_empty too;
- an FFN unit of a layer keeping w neurons: ffn(w) - ffn(w - 1).

Units are removed in increasing importance / marginal latency until the predicted latency reaches
the target. Marginal costs change as heads narrow, so the selection proceeds in rounds, each
removing units worth at most half the remaining gap (at least one) and then re-pricing. It runs on
the host: it reads the masks and scores once per round, in a pruning step (rare), never per step.
"""

from __future__ import annotations

import torch

from grain.models.masks import EncoderShape

_FREE = 1e-9  # ms: a unit whose removal saves nothing measurable is priced (almost) free of speed gain


def marginal_costs(masks: dict[str, torch.Tensor], shape: EncoderShape, model) -> dict[str, torch.Tensor]:
    """Per unit, the predicted ms saved by removing it now: {"qk"|"vo": [layers, hidden], "ffn": [layers, ffn]}
    (float64 on the CPU; removed units get 0)."""
    layers, heads, d = shape.num_layers, shape.num_heads, shape.head_dim
    qk_m = masks["qk"].detach().cpu().view(layers, heads, d) > 0
    vo_m = masks["vo"].detach().cpu().view(layers, heads, d) > 0
    ffn_m = masks["ffn"].detach().cpu() > 0
    costs = {kind: torch.zeros(layers, n, dtype=torch.float64, device="cpu") for kind, n in shape.units_per_layer.items()}
    for layer in range(layers):
        q_widths, v_widths = qk_m[layer].sum(-1).tolist(), vo_m[layer].sum(-1).tolist()
        live_heads = sum(1 for v in v_widths if v > 0)
        for h in range(heads):
            q, v = q_widths[h], v_widths[h]
            if v == 0:
                continue
            span = slice(h * d, (h + 1) * d)
            if q > 0:
                qk_cost = model.head_cost(q, v) - model.head_cost(q - 1, v)
                costs["qk"][layer, span][qk_m[layer, h]] = qk_cost
            if v > 1:
                vo_cost = model.head_cost(q, v) - model.head_cost(q, v - 1)
            else:
                vo_cost = model.head_cost(q, 1)
                if live_heads == 1:
                    vo_cost += model.attention_base_ms - model.attention_empty_ms
            costs["vo"][layer, span][vo_m[layer, h]] = vo_cost
        w = int(ffn_m[layer].sum())
        if w > 0:
            costs["ffn"][layer][ffn_m[layer]] = model.ffn_cost(w) - model.ffn_cost(w - 1)
    return costs


def _ratios(scores, masks, costs, shape: EncoderShape) -> dict[str, torch.Tensor]:
    """Importance lost per ms saved, per kept unit (+inf for removed units). A head's last VO unit
    also loses the head's QK scores."""
    layers, heads, d = shape.num_layers, shape.num_heads, shape.head_dim
    kept = {k: masks[k].detach().cpu() > 0 for k in masks}
    loss = {k: scores[k].detach().cpu().double().clamp_min(0).masked_fill(~kept[k], 0) for k in scores}
    vo_width = kept["vo"].view(layers, heads, d).sum(-1, keepdim=True)
    head_qk = loss["qk"].view(layers, heads, d).sum(-1, keepdim=True)
    last_vo = (vo_width == 1).expand(layers, heads, d).reshape(layers, -1) & kept["vo"]
    loss["vo"] = loss["vo"] + last_vo * head_qk.expand(layers, heads, d).reshape(layers, -1)
    return {
        k: (loss[k] / costs[k].clamp_min(_FREE)).masked_fill(~kept[k], float("inf"))
        for k in ("qk", "vo", "ffn")
    }


@torch.no_grad()
def prune_to_latency(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], shape: EncoderShape,
                     model, target_ms: float, max_rounds: int = 200) -> None:
    """Zero mask entries in place until `model.predict_masks(masks) <= target_ms` (or nothing is left to
    remove), by increasing importance per ms saved; orphaned QK units (heads without VO) go with their head.

    scores/masks: {"qk"|"vo": [layers, hidden], "ffn": [layers, intermediate]}, on any device; target in ms.
    """
    for _ in range(max_rounds):
        _remove_orphan_qk(masks, shape)
        gap = model.predict_masks(masks, shape) - target_ms
        if gap <= 0:
            return
        costs = marginal_costs(masks, shape, model)
        ratios = _ratios(scores, masks, costs, shape)
        kinds = ("qk", "vo", "ffn")
        flat_ratio = torch.cat([ratios[k].flatten() for k in kinds])
        flat_cost = torch.cat([costs[k].flatten() for k in kinds])
        order = torch.argsort(flat_ratio, stable=True)
        order = order[torch.isfinite(flat_ratio[order])]
        if order.numel() == 0:
            return
        saved_before = torch.cumsum(flat_cost[order], 0) - flat_cost[order]
        chosen = order[saved_before < max(gap / 2, _FREE)]
        chosen = chosen if chosen.numel() else order[:1]
        offset = 0
        for kind in kinds:
            n = masks[kind].numel()
            picked = chosen[(chosen >= offset) & (chosen < offset + n)] - offset
            masks[kind].view(-1)[picked.to(masks[kind].device)] = 0.0
            offset += n
    _remove_orphan_qk(masks, shape)


def _remove_orphan_qk(masks: dict[str, torch.Tensor], shape: EncoderShape) -> None:
    layers, heads, d = shape.num_layers, shape.num_heads, shape.head_dim
    empty = masks["vo"].view(layers, heads, d).amax(-1, keepdim=True) == 0
    masks["qk"].view(layers, heads, d).masked_fill_(empty, 0.0)

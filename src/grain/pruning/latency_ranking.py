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

Units are removed one at a time in increasing importance / marginal latency until the predicted
latency reaches the target; within a head (or an FFN layer) the least important unit goes first,
and every removal re-prices what it changed (a head's widths, a layer's last head). It runs on the
host: it reads the masks and scores once, in a pruning step (rare), never per training step.
"""

from __future__ import annotations

import heapq

import torch

from grain.models.masks import EncoderShape

_FREE = 1e-9  # ms: a unit whose removal saves nothing measurable is priced (almost) free of speed gain


def head_unit_cost(model, q: int, v: int, kind: str, heads_in_layer: int) -> float:
    """ms saved by removing one unit of `kind` ("qk" or "vo") from a head of widths (q, v) in a layer
    that keeps `heads_in_layer` heads (the head's last VO unit takes the head, and the layer's last
    head the attention sub-layer's base)."""
    if kind == "qk":
        return model.head_cost(q, v) - model.head_cost(q - 1, v)
    if v > 1:
        return model.head_cost(q, v) - model.head_cost(q, v - 1)
    cost = model.head_cost(q, 1)
    if heads_in_layer == 1:
        cost += model.attention_base_ms - model.attention_empty_ms
    return cost


def marginal_costs(masks: dict[str, torch.Tensor], shape: EncoderShape, model) -> dict[str, torch.Tensor]:
    """Per unit, the predicted ms saved by removing it now: {"qk"|"vo": [layers, hidden], "ffn": [layers, ffn]}
    (float64 on the CPU; removed units, and units of heads without VO units, get 0)."""
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
                costs["qk"][layer, span][qk_m[layer, h]] = head_unit_cost(model, q, v, "qk", live_heads)
            costs["vo"][layer, span][vo_m[layer, h]] = head_unit_cost(model, q, v, "vo", live_heads)
        w = int(ffn_m[layer].sum())
        if w > 0:
            costs["ffn"][layer][ffn_m[layer]] = model.ffn_cost(w) - model.ffn_cost(w - 1)
    return costs


class _State:
    """The structure on the host while units are removed: per head the kept QK and VO units in
    increasing score order, per layer the kept FFN neurons; widths follow the removals."""

    def __init__(self, scores, masks, shape: EncoderShape):
        layers, heads, d = shape.num_layers, shape.num_heads, shape.head_dim
        self.shape = shape
        self.score = {k: scores[k].detach().cpu().double().clamp_min(0).view(layers, -1).tolist() for k in scores}
        kept = {k: (masks[k].detach().cpu() > 0).view(layers, -1).tolist() for k in masks}

        def order(kind, layer, units):
            return sorted((u for u in units if kept[kind][layer][u]), key=lambda u: self.score[kind][layer][u], reverse=True)

        # stacks: the next unit to remove is at the end
        self.qk = [[order("qk", l, range(h * d, (h + 1) * d)) for h in range(heads)] for l in range(layers)]
        self.vo = [[order("vo", l, range(h * d, (h + 1) * d)) for h in range(heads)] for l in range(layers)]
        self.ffn = [order("ffn", l, range(shape.intermediate_size)) for l in range(layers)]
        self.removed = {"qk": [], "vo": [], "ffn": []}  # (layer, unit)

    def live_heads(self, layer: int) -> int:
        return sum(1 for units in self.vo[layer] if units)

    def price(self, model, kind: str, layer: int, head: int | None) -> tuple[float, float] | None:
        """(importance lost, ms saved) by removing the next unit of this head (or layer, for FFN)."""
        if kind == "ffn":
            units = self.ffn[layer]
            if not units:
                return None
            w = len(units)
            return self.score["ffn"][layer][units[-1]], model.ffn_cost(w) - model.ffn_cost(w - 1)
        qk, vo = self.qk[layer][head], self.vo[layer][head]
        if not vo or (kind == "qk" and not qk):
            return None
        cost = head_unit_cost(model, len(qk), len(vo), kind, self.live_heads(layer))
        unit = (qk if kind == "qk" else vo)[-1]
        loss = self.score[kind][layer][unit]
        if kind == "vo" and len(vo) == 1:  # the head goes, its QK units with it
            loss += sum(self.score["qk"][layer][u] for u in qk)
        return loss, cost

    def remove(self, kind: str, layer: int, head: int | None) -> None:
        if kind == "ffn":
            self.removed["ffn"].append((layer, self.ffn[layer].pop()))
            return
        stack = self.qk[layer][head] if kind == "qk" else self.vo[layer][head]
        self.removed[kind].append((layer, stack.pop()))
        if kind == "vo" and not stack:  # orphaned QK units go with the head
            self.removed["qk"] += [(layer, u) for u in self.qk[layer][head]]
            self.qk[layer][head] = []


@torch.no_grad()
def prune_to_latency(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], shape: EncoderShape,
                     model, target_ms: float) -> None:
    """Zero mask entries in place until `model.predict_masks(masks) <= target_ms` (or nothing is left),
    one unit at a time by increasing importance lost per ms saved, each priced exactly for the
    structure left at that moment (a heap of every head's and layer's next unit, re-priced when its
    head or layer changes). Orphaned QK units (heads without VO units) go with their head.

    scores/masks: {"qk"|"vo": [layers, hidden], "ffn": [layers, intermediate]}, on any device; target in ms.
    """
    _remove_orphan_qk(masks, shape)
    state = _State(scores, masks, shape)
    predicted = model.predict_masks(masks, shape)
    version = {}  # (layer, head or None) -> int: entries of an older version are stale
    heap: list = []
    counter = 0

    def push(kind, layer, head):
        nonlocal counter
        priced = state.price(model, kind, layer, head)
        if priced is not None:
            loss, cost = priced
            key = (layer, None if kind == "ffn" else head)
            heapq.heappush(heap, (loss / max(cost, _FREE), counter, kind, layer, head, version.get(key, 0), cost))
            counter += 1

    def reprice(layer, head):
        key = (layer, head)
        version[key] = version.get(key, 0) + 1
        if head is None:
            push("ffn", layer, None)
        else:
            push("qk", layer, head)
            push("vo", layer, head)

    for layer in range(shape.num_layers):
        for head in range(shape.num_heads):
            push("qk", layer, head)
            push("vo", layer, head)
        push("ffn", layer, None)
    while predicted > target_ms and heap:
        _, _, kind, layer, head, entry_version, cost = heapq.heappop(heap)
        key = (layer, None if kind == "ffn" else head)
        if entry_version != version.get(key, 0):
            continue
        heads_before = state.live_heads(layer)
        state.remove(kind, layer, head)
        predicted -= cost
        if kind == "ffn":
            reprice(layer, None)
        elif state.live_heads(layer) != heads_before:  # the layer's last head prices its base in
            for h in range(shape.num_heads):
                reprice(layer, h)
        else:
            reprice(layer, head)
    for kind, removed in state.removed.items():
        if removed:
            index = torch.tensor(removed, dtype=torch.long, device="cpu").to(masks[kind].device)
            masks[kind][index[:, 0], index[:, 1]] = 0.0


def _remove_orphan_qk(masks: dict[str, torch.Tensor], shape: EncoderShape) -> None:
    layers, heads, d = shape.num_layers, shape.num_heads, shape.head_dim
    empty = masks["vo"].view(layers, heads, d).amax(-1, keepdim=True) == 0
    masks["qk"].view(layers, heads, d).masked_fill_(empty, 0.0)

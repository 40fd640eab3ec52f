"""Latency-aware selection: remove the units that lose the least importance per millisecond saved.

GRAIN as published ranks units by importance and charges each its parameter count. Here a removal
is charged what it saves under a measured latency model of the compact model (see
`grain.bench.latency_model`; any object with its `attention_cost`, `ffn_cost`, `layer_scale` and
`predict_masks` works), for the structure left at that moment, exactly (each saving below is of the
sub-layers timed alone; a whole model saves `layer_scale` times it, which orders nothing differently):

- QK or VO units of a head: attention_cost(the layer before) - attention_cost(the layer after),
  the layer's heads grouped as the device's kernel plan groups them. The saving therefore holds
  everything the removal changes: the head's move from its width group to another (a group left
  empty frees its call cost, a width no other head has opens one), the head itself when its last
  VO unit goes (charged once, then; its QK units go with it and their importance counts as lost),
  the layer's grouped / uniform parts when its last grouped / uniform head goes, and
  attention_base - attention_empty when its last head goes (the emptied sub-layer).
- FFN units of a layer keeping w neurons: ffn(w) - ffn(w - k) (the FFN runs at a multiple of 8
  columns, so single neurons mostly save nothing and every 8th saves a step).

Because one unit may save nothing (an FFN neuron inside a multiple of 8, a QK width 2 -> 1 that
keeps its slot of 2) or even cost time (a head leaving a shared group for a width of its own), the
candidates are runs: per head and kind (and per FFN layer) the fewest next least important units
whose removal saves time, priced as their importance over the ms they save. Runs go by increasing
price until the predicted latency reaches the target; each removal re-prices every candidate of its
layer (through the groups, one head's width changes what the others save). The predicted latency is
kept exactly (the savings taken add up to predicted before - predicted after). It is a greedy
choice on exact current savings, not a global optimum; a run that saves nothing at any length is
priced (almost) free of speed gain and goes last. It runs on the host: it reads the masks and scores
once, in a pruning step (rare), never per training step.
"""

from __future__ import annotations

import heapq

import torch

from grain.models.masks import EncoderShape

_FREE = 1e-9   # ms: a run whose removal saves nothing measurable is priced (almost) free of speed gain
_SAVES = 1e-9  # ms: a saving below this is no saving


def removed_widths(qk: list[int], vo: list[int], head: int, kind: str, count: int = 1) -> tuple[list[int], list[int]]:
    """A layer's head widths after removing `count` dimensions of `kind` from `head` (its last VO unit
    takes the head, QK units included)."""
    qk, vo = list(qk), list(vo)
    if kind == "qk":
        qk[head] -= count
    else:
        vo[head] -= count
        if vo[head] == 0:
            qk[head] = 0
    return qk, vo


class _State:
    """The structure on the host while units are removed: per head the kept QK and VO units in
    increasing score order, per layer the kept FFN neurons; widths follow the removals."""

    def __init__(self, scores, masks, shape: EncoderShape):
        layers, heads, d, q = shape.num_layers, shape.num_heads, shape.head_dim, shape.qk_units_per_head
        self.shape = shape
        self.score = {k: scores[k].detach().cpu().double().clamp_min(0).view(layers, -1).tolist() for k in scores}
        kept = {k: (masks[k].detach().cpu() > 0).view(layers, -1).tolist() for k in masks}

        def order(kind, layer, units):
            return sorted((u for u in units if kept[kind][layer][u]), key=lambda u: self.score[kind][layer][u], reverse=True)

        # stacks: the next unit to remove is at the end
        self.qk = [[order("qk", i, range(h * q, (h + 1) * q)) for h in range(heads)] for i in range(layers)]
        self.vo = [[order("vo", i, range(h * d, (h + 1) * d)) for h in range(heads)] for i in range(layers)]
        self.ffn = [order("ffn", i, range(shape.intermediate_size)) for i in range(layers)]
        self.removed = {"qk": [], "vo": [], "ffn": []}  # (layer, unit)
        self._attention_ms: dict[int, float] = {}  # per layer, for its current widths

    def widths(self, layer: int) -> tuple[list[int], list[int]]:
        """The layer's QK widths (units x qk_unit_width: a rotary pair is two dimensions) and VO widths."""
        return [len(s) * self.shape.qk_unit_width for s in self.qk[layer]], [len(s) for s in self.vo[layer]]

    def attention_ms(self, model, layer: int) -> float:
        if layer not in self._attention_ms:
            self._attention_ms[layer] = model.attention_cost(*self.widths(layer))
        return self._attention_ms[layer]

    def price(self, model, kind: str, layer: int, head: int | None) -> tuple[float, float, int] | None:
        """(importance lost, ms saved, units) of the next run of this head's `kind` (or layer's FFN):
        the fewest next units whose removal saves time; one unit where no run saves any."""
        if kind == "ffn":
            units = self.ffn[layer]
            if not units:
                return None
            w, before, loss = len(units), model.ffn_cost(len(units)), 0.0
            for k in range(1, w + 1):
                loss += self.score["ffn"][layer][units[-k]]
                saved = before - model.ffn_cost(w - k)
                if saved > _SAVES:
                    return loss, saved, k
            return self.score["ffn"][layer][units[-1]], model.ffn_cost(w) - model.ffn_cost(w - 1), 1
        qk_stack, vo_stack = self.qk[layer][head], self.vo[layer][head]
        stack = qk_stack if kind == "qk" else vo_stack
        if not vo_stack or not stack:
            return None
        qk, vo = self.widths(layer)
        before = self.attention_ms(model, layer)
        loss, first = 0.0, None
        for k in range(1, len(stack) + 1):
            loss += self.score[kind][layer][stack[-k]]
            whole = loss + (sum(self.score["qk"][layer][u] for u in qk_stack) if kind == "vo" and k == len(stack) else 0.0)
            width = k * self.shape.qk_unit_width if kind == "qk" else k
            saved = before - model.attention_cost(*removed_widths(qk, vo, head, kind, width))
            if first is None:
                first = (whole, saved, 1)
            if saved > _SAVES:
                return whole, saved, k
        return first

    def remove(self, kind: str, layer: int, head: int | None, count: int) -> None:
        if kind == "ffn":
            self.removed["ffn"] += [(layer, self.ffn[layer].pop()) for _ in range(count)]
            return
        stack = self.qk[layer][head] if kind == "qk" else self.vo[layer][head]
        self.removed[kind] += [(layer, stack.pop()) for _ in range(count)]
        if kind == "vo" and not stack:  # orphaned QK units go with the head
            self.removed["qk"] += [(layer, u) for u in self.qk[layer][head]]
            self.qk[layer][head] = []
        self._attention_ms.pop(layer, None)


@torch.no_grad()
def prune_to_latency(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], shape: EncoderShape,
                     model, target_ms: float) -> float:
    """Zero mask entries in place until `model.predict_masks(masks) <= target_ms` (or nothing is left),
    run by run (see the module docstring) by increasing importance lost per ms saved, each run priced
    exactly for the structure left at that moment (a heap of every head's and layer's next run; a
    removal re-prices its layer). Orphaned QK units (heads without VO units) go with their head.

    scores/masks: {"qk": [layers, qk units], "vo": [layers, hidden], "ffn": [layers, intermediate]}, on any device; target
    in ms. Returns the predicted ms of the result (kept exactly along the way).
    """
    _remove_orphan_qk(masks, shape)
    state = _State(scores, masks, shape)
    predicted = model.predict_masks(masks, shape)
    version: dict = {}  # (layer, "attention" | "ffn") -> int: entries of an older version are stale
    heap: list = []
    counter = 0

    def push(kind, layer, head):
        nonlocal counter
        priced = state.price(model, kind, layer, head)
        if priced is not None:
            loss, saved, count = priced
            part = "ffn" if kind == "ffn" else "attention"
            heapq.heappush(heap, (loss / max(saved, _FREE), counter, kind, layer, head, version.get((layer, part), 0),
                                  saved, count))
            counter += 1

    def push_layer(layer, part):
        version[(layer, part)] = version.get((layer, part), 0) + 1
        if part == "ffn":
            push("ffn", layer, None)
            return
        for head in range(shape.num_heads):
            push("qk", layer, head)
            push("vo", layer, head)

    for layer in range(shape.num_layers):
        push_layer(layer, "attention")
        push_layer(layer, "ffn")
    while predicted > target_ms and heap:
        _, _, kind, layer, head, entry_version, saved, count = heapq.heappop(heap)
        part = "ffn" if kind == "ffn" else "attention"
        if entry_version != version[(layer, part)]:
            continue
        state.remove(kind, layer, head, count)
        predicted -= model.layer_scale * saved
        push_layer(layer, part)
    for kind, removed in state.removed.items():
        if removed:
            index = torch.tensor(removed, dtype=torch.long, device="cpu").to(masks[kind].device)
            masks[kind][index[:, 0], index[:, 1]] = 0.0
    return predicted


def _remove_orphan_qk(masks: dict[str, torch.Tensor], shape: EncoderShape) -> None:
    layers, heads = shape.num_layers, shape.num_heads
    empty = masks["vo"].view(layers, heads, -1).amax(-1, keepdim=True) == 0
    masks["qk"].view(layers, heads, -1).masked_fill_(empty, 0.0)

"""Named pruned structures as unit masks: laid out as first units, for timing what a structure costs."""

from __future__ import annotations

import torch

from grain.models.masks import EncoderShape


def first_units(shape: EncoderShape, heads_per_layer: list[int], qk: list[list[int]], vo: list[list[int]],
                ffn: list[int]) -> dict[str, torch.Tensor]:
    """Masks {"qk": [layers, qk units], "vo": [layers, hidden], "ffn": [layers, intermediate]} (CPU)
    keeping, in layer l, heads 0..heads_per_layer[l]-1 with their first qk[l][h] / vo[l][h] units (a
    rotary QK unit is a pair of dimensions), and the first ffn[l] FFN neurons."""
    masks = {kind: torch.zeros(shape.num_layers, size, device="cpu") for kind, size in shape.units_per_layer.items()}
    d, q = shape.head_dim, shape.qk_units_per_head
    for layer in range(shape.num_layers):
        for h in range(heads_per_layer[layer]):
            masks["qk"][layer, h * q:h * q + qk[layer][h]] = 1
            masks["vo"][layer, h * d:h * d + vo[layer][h]] = 1
        masks["ffn"][layer, :ffn[layer]] = 1
    return masks


def paper_5pct(shape: EncoderShape) -> dict[str, torch.Tensor]:
    """The paper's reported 5% structure (Yang et al. 2023, Table 6 averages laid out): 3 heads in the
    first layer and 2 in every other, each keeping 29 QK and 29 VO units, and 113 FFN neurons per layer
    (on a BERT-base shape, a density of 5.07% of the encoder linear weights)."""
    heads = [3] + [2] * (shape.num_layers - 1)
    widths = [[29] * n for n in heads]
    qk_units = [[-(-29 // shape.qk_unit_width)] * n for n in heads]  # rotary pairs: 15 (30 dimensions)
    return first_units(shape, heads, qk_units, widths, [113] * shape.num_layers)


def floor_masks(shape: EncoderShape) -> dict[str, torch.Tensor]:
    """One head (QK 1, VO 1) and one FFN neuron per layer: what no pruning of heads and neurons gets
    past (embeddings, LayerNorms, residual adds and a softmax per head remain)."""
    ones = [[1]] * shape.num_layers
    return first_units(shape, [1] * shape.num_layers, ones, ones, [1] * shape.num_layers)

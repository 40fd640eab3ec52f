"""Structure regularization: shrink updates of fragmented heads and nearly empty layers."""

from __future__ import annotations

import torch


def regularize_updates(
    updates: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    num_heads: int,
    alpha_head: float,
    alpha_layer: float,
) -> dict[str, torch.Tensor]:
    """Scale the VO update of each head by tanh(head_vo_density / alpha_head) and the VO and FFN
    updates of each layer by tanh(layer_density / alpha_layer). QK updates are left as they are.

    updates/masks: {"qk"|"vo": [layers, hidden], "ffn": [layers, intermediate]}; densities are the
    fraction of units still kept (mask == 1).
    """
    vo = updates["vo"]
    layers, hidden = vo.shape
    vo_mask = masks["vo"].view(layers, num_heads, hidden // num_heads)
    head_scale = torch.tanh(vo_mask.mean(dim=-1, keepdim=True) / alpha_head)
    vo_layer_scale = torch.tanh(masks["vo"].mean(dim=-1, keepdim=True) / alpha_layer)
    ffn_layer_scale = torch.tanh(masks["ffn"].mean(dim=-1, keepdim=True) / alpha_layer)
    return {
        "qk": updates["qk"],
        "vo": (vo.view_as(vo_mask) * head_scale).view(layers, hidden) * vo_layer_scale,
        "ffn": updates["ffn"] * ffn_layer_scale,
    }

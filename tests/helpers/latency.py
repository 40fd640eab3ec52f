"""A latency model of known parts, on a 2-layer, 4-head shape: the tests of the latency model, of
latency-aware selection and of speedup targets check grain's bookkeeping against its numbers."""

from __future__ import annotations

import torch

from grain.measure.latency_model import LatencyModel, head_grid, model_key
from grain.models.masks import EncoderShape

SHAPE = EncoderShape(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128)
CALL = 0.03  # ms per batched attention call (group)


def head(q, v):
    """The known per-head cost: QK slot q (0: a uniform head), VO width v; bilinear exactly."""
    return 0.01 * q + 0.001 * v + 0.05 if q > 0 else 0.002 * v + 0.01


def known_model(plan: str = "grouped", shape: EncoderShape = SHAPE) -> LatencyModel:
    """Fixed part 1.0, empty attention 0.1, attention base 0.5, grouped part 0.07, uniform part 0.02, a
    call CALL per group, heads at `head`, FFN 0.2 / 0.6 / 1.0 ms at 0 / 64 / 128 neurons."""
    rows, columns = head_grid(shape.head_dim, plan)  # [0, 2, 4, 8, 12, 16], [1, 2, 4, 8, 12, 16] (grouped, SHAPE)
    return LatencyModel(
        key=model_key(shape, torch.device("cpu"), torch.float32, 4, 16),
        fixed_ms=1.0, attention_empty_ms=0.1, attention_base_ms=0.5,
        head_widths=rows, vo_widths=columns, head_ms=[[head(q, v) for v in columns] for q in rows],
        ffn_widths=[0, 64, 128], ffn_ms=[0.2, 0.6, 1.0], group_ms=CALL, grouped_ms=0.07, uniform_ms=0.02, plan=plan,
    )

"""FLOPs of a forward pass, counted by torch.utils.flop_counter."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from grain.models.backbone import eval_mode
from grain.models.compact.bert import GrainIntermediate, GrainSelfAttention
from grain.models.inputs import random_batch


def _register_cpu_attention_formula() -> None:
    """torch counts the CUDA attention kernels but not the CPU flash kernel; count it the same way."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return
    try:
        @register_flop_formula(op)
        def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)
    except (RuntimeError, ValueError):  # already registered (by torch or an earlier import)
        pass


_register_cpu_attention_formula()


def dummy_inputs(model, batch: int, seq_len: int, device=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full [batch, seq_len] block of random word ids (no padding, `random_batch`), on the model's device."""
    device = device or next(model.parameters()).device
    return random_batch(model.config, batch, seq_len, seed=seed, device=device)


@torch.no_grad()
def count_flops(model, batch: int, seq_len: int) -> int:
    """Total FLOPs (multiply-add = 2) of one forward pass on a [batch, seq_len] input."""
    inputs = dummy_inputs(model, batch, seq_len)
    with eval_mode(model), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return int(counter.get_total_flops())


def padding_flops(model, batch: int, seq_len: int) -> int:
    """FLOPs a compact model spends on its zero padding (counted by `count_flops`, but no kept unit's).

    The compact model pads matmul widths for speed, by the kernel plan of the device it is on
    (grain.models.compact.kernels: `round_up`, the CPU plan's QK slot of 2 for width-1 heads, the GPU plan's
    common head width) and says how much (each plan's `padding_flops`, `GrainIntermediate.padded_width`);
    the FLOPs-ideal speedup is measured against the kept units only.
    """
    device = next(model.parameters()).device
    tokens = batch * seq_len
    total = 0
    for module in model.modules():
        if isinstance(module, GrainSelfAttention):
            total += module.layout_for(device).padding_flops(module.query.in_features, batch, seq_len)
        elif isinstance(module, GrainIntermediate):
            extra = module.padded_width - module.dense.out_features
            total += 2 * 2 * tokens * module.dense.in_features * extra  # up and down
    return total

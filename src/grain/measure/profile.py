"""Where a forward pass spends its time, by operator (torch.profiler), dense next to compact.

The FLOPs-ideal speedup counts matrix products only. This table shows what else a pruned model
still pays for: attention softmax (one per kept head, whatever its QK width), LayerNorms and residual
adds over the full hidden width, and the per-head copies of narrow attention inputs and outputs.
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from grain.measure.flops import dummy_inputs
from grain.models.backbone import eval_mode


@torch.inference_mode()
def op_times(model, batch: int, seq_len: int, forwards: int = 5) -> dict[str, float]:
    """Self time of every operator, in ms per forward pass on [batch, seq_len] (device time on GPU)."""
    inputs = dummy_inputs(model, batch, seq_len)
    on_gpu = inputs["input_ids"].device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with eval_mode(model):
        for _ in range(2):  # warm-up outside the profile
            model(**inputs)
        with profile(activities=activities) as prof:
            for _ in range(forwards):
                model(**inputs)
            if on_gpu:
                torch.cuda.synchronize()
    attribute = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    times = {event.key: getattr(event, attribute) / 1e3 / forwards for event in prof.key_averages()}
    return {name: ms for name, ms in times.items() if ms > 0}


def format_op_table(dense: dict[str, float], compact: dict[str, float], top: int = 10) -> str:
    """The compact model's `top` most expensive operators, with the dense model's time for each."""
    names = sorted(compact, key=compact.get, reverse=True)[:top]
    width = max(len(n) for n in names + ["operator"])
    lines = [f"{'operator':{width}} {'dense ms':>10} {'compact ms':>11} {'compact %':>10}"]
    compact_total = sum(compact.values())
    for name in names:
        lines.append(
            f"{name:{width}} {dense.get(name, 0.0):10.2f} {compact[name]:11.2f} {compact[name] / compact_total:10.0%}"
        )
    lines.append(f"{'all operators':{width}} {sum(dense.values()):10.2f} {compact_total:11.2f}")
    return "\n".join(lines)

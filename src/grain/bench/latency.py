"""Forward latency measured with torch.utils.benchmark (fixed threads, warm-up, median)."""

from __future__ import annotations

import torch
from torch.utils import benchmark

from grain.bench.flops import dummy_inputs


@torch.inference_mode()
def measure_latency(model, batch: int, seq_len: int, threads: int | None = None, min_run_time: float = 3.0) -> dict:
    """Median and interquartile range, in milliseconds, of one forward pass on [batch, seq_len]."""
    was_training = model.training
    model.eval()
    inputs = dummy_inputs(model, batch, seq_len)
    device = inputs["input_ids"].device
    threads = threads or torch.get_num_threads()
    for _ in range(3):  # warm-up: allocator, kernel selection
        model(**inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timer = benchmark.Timer(
        stmt="model(**inputs)", globals={"model": model, "inputs": inputs}, num_threads=threads,
    )
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    model.train(was_training)
    return {"median_ms": measurement.median * 1e3, "iqr_ms": measurement.iqr * 1e3, "threads": threads, "runs": len(measurement.times)}

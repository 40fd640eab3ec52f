"""Forward latency measured with torch.utils.benchmark (fixed threads, warm-up, median)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

import torch
from torch.utils import benchmark

from grain.measure.flops import dummy_inputs
from grain.models.backbone import eval_mode


@torch.inference_mode()
def measure_latency(model, batch: int, seq_len: int, threads: int | None = None, min_run_time: float = 3.0) -> dict:
    """Median and interquartile range, in milliseconds, of one forward pass on [batch, seq_len]."""
    inputs = dummy_inputs(model, batch, seq_len)
    device = inputs["input_ids"].device
    threads = threads or torch.get_num_threads()
    with eval_mode(model):
        for _ in range(3):  # warm-up: allocator, kernel selection
            model(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timer = benchmark.Timer(
            stmt="model(**inputs)", globals={"model": model, "inputs": inputs}, num_threads=threads,
        )
        measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return {
        "median_ms": measurement.median * 1e3, "iqr_ms": measurement.iqr * 1e3, "threads": threads,
        "runs": len(measurement.times),
    }


@functools.cache
def retain_freed_memory() -> str:
    """Make glibc malloc keep freed buffers for reuse instead of handing them back to the OS.

    By default glibc serves buffers of a few MB with mmap and unmaps them when freed, so every
    forward pass page-faults its activations afresh, which costs a small compact model more, in
    proportion, than the dense one (docs/measurements.md). PyTorch's CPU performance guide suggests
    jemalloc or tcmalloc for the same reason. Affects this process only; returns what it did.
    """
    libc_name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or libc_name is None or platform.libc_ver()[0] != "glibc":
        return "system allocator"
    libc = ctypes.CDLL(libc_name)
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # 32 MiB is glibc's largest mmap threshold on 64-bit; never trim the heap top.
    if libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1):
        return "glibc, freed memory retained"
    return "system allocator"

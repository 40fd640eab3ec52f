"""Dense vs compact: parameters, FLOPs and latency, the numbers summary.json's `compact` section holds."""

from __future__ import annotations

import statistics

import torch

from grain.measure.flops import count_flops, padding_flops
from grain.measure.latency import measure_latency, retain_freed_memory
from grain.measure.structures import floor_masks
from grain.models.masks import EncoderShape, encoder_layers
from grain.models.slicing import compact_from_masked


def encoder_linear_param_count(model) -> int:
    """Parameters of the encoder layers' linear maps, LayerNorms excluded (the quantity
    `student.encoder_linear_sparsity` is measured over); a compact sub-layer with no kept units counts
    its remaining output bias."""
    layers = encoder_layers(model)
    norms = {id(p) for m in layers.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    return sum(p.numel() for p in layers.parameters() if id(p) not in norms)


def serving_defaults(device: torch.device) -> tuple[torch.dtype, list[tuple[int, int]]]:
    """The dtype a compact model is served in on `device` and the [batch, length] shapes to time it at:
    bf16 at 128 x 512 (the paper's measurement) and 32 x 128 on a GPU, fp32 at 32 x 128 on CPU."""
    if device.type == "cuda":
        return torch.bfloat16, [(128, 512), (32, 128)]
    return torch.float32, [(32, 128)]


def serving_device(trainer_cfg) -> torch.device:
    """The device a run trains on, from its `trainer` settings (Lightning hands the model back on the CPU
    after fit): where its compact model is benchmarked and its latency model measured."""
    accelerator = str(trainer_cfg.accelerator)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def bench_shapes(compact_cfg, device: torch.device) -> list[tuple[int, int]]:
    """[batch, length] shapes to time: `compact.bench_batch` x `bench_seq_len` first, then
    `compact.bench_extra_shapes`; each null falls back to the device's default (`serving_defaults`)."""
    defaults = serving_defaults(device)[1]
    primary = (int(compact_cfg.bench_batch or defaults[0][0]), int(compact_cfg.bench_seq_len or defaults[0][1]))
    extra = compact_cfg.get("bench_extra_shapes")
    extra = defaults[1:] if extra is None else [tuple(int(v) for v in shape) for shape in extra]
    return [primary] + [shape for shape in extra if shape != primary]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"cpu ({torch.get_num_threads()} threads)"


def compiled(model, compile: bool | str):
    """`model` under torch.compile: compile=True or "default", or a mode ("reduce-overhead": CUDA graphs,
    "max-autotune"); False: eager."""
    if not compile:
        return model
    return torch.compile(model, mode=None if compile is True or compile == "default" else compile)


def floor_latency(dense, batch: int, seq_len: int, min_run_time: float, compile: bool | str = False) -> float:
    """Latency (ms) of the compact model that keeps almost nothing of `dense` (`floor_masks`).

    What no pruning of heads and neurons removes: embeddings, LayerNorms and residual adds over
    [tokens, hidden], a softmax per kept head, and reading the hidden states into every projection.
    dense latency / floor latency bounds the speedup any sparsity can reach on this machine.
    """
    floor, _ = compact_from_masked(dense, floor_masks(EncoderShape.of(dense)))
    floor = floor.to(next(dense.parameters()).dtype).eval()
    return measure_latency(compiled(floor, compile), batch, seq_len, min_run_time=min_run_time)["median_ms"]


def compare_models(
    dense, compact, batch: int, seq_len: int, min_run_time: float = 3.0, compile: bool | str = False,
    rounds: int = 3, tune_allocator: bool = True,
) -> dict:
    """FLOPs (eager) and latency of both models, on the device and in the dtype they are on;
    `compile` times torch.compile'd copies of both (a mode name: see `compiled`), the same way.

    Latency alternates dense and compact for `rounds` rounds and keeps each model's median round,
    so that a slow spell of a shared machine does not fall on one model only. Returns the numbers
    summary.json's `compact` section holds (ms, FLOPs per forward, parameter counts).
    """
    device = next(compact.parameters()).device
    allocator = retain_freed_memory() if tune_allocator and device.type == "cpu" else "system allocator"
    timed_dense, timed_compact = compiled(dense, compile), compiled(compact, compile)
    threads = torch.get_num_threads()
    rounds_ms = {"dense": [], "compact": []}
    for _ in range(rounds):
        for name, model in (("dense", timed_dense), ("compact", timed_compact)):
            timing = measure_latency(model, batch, seq_len, threads=threads, min_run_time=min_run_time / rounds)
            rounds_ms[name].append(timing["median_ms"])
    return {
        **comparison(dense, compact, batch, seq_len, rounds_ms),
        "device": device_name(device),
        "dtype": str(next(compact.parameters()).dtype).removeprefix("torch."),
        "allocator": allocator,
        "compiled": compile or False,
    }


def comparison(dense, compact, batch: int, seq_len: int, rounds_ms: dict[str, list[float]]) -> dict:
    """What every dense-vs-compact measurement reports, whatever ran the models: parameter counts and
    FLOPs (eager PyTorch, on the models' device), and from each model's per-round medians (ms) the
    median latency and the speedup."""
    dense_flops = count_flops(dense, batch, seq_len)
    compact_flops = count_flops(compact, batch, seq_len)
    kept_flops = compact_flops - padding_flops(compact, batch, seq_len)
    dense_ms, compact_ms = statistics.median(rounds_ms["dense"]), statistics.median(rounds_ms["compact"])
    return {
        "encoder_params": encoder_linear_param_count(compact),
        "dense_encoder_params": encoder_linear_param_count(dense),
        "params": sum(p.numel() for p in compact.parameters()),
        "dense_params": sum(p.numel() for p in dense.parameters()),
        "flops": compact_flops,  # as executed, with the compact model's zero padding
        "kept_flops": kept_flops,  # of the kept units only
        "dense_flops": dense_flops,
        "flops_ratio": dense_flops / max(kept_flops, 1),  # the FLOPs-ideal speedup
        "latency_ms": compact_ms,
        "dense_latency_ms": dense_ms,
        "latency_rounds_ms": rounds_ms,  # each round's median, the spread of the measurement
        "speedup": dense_ms / compact_ms,
        "batch": batch,
        "seq_len": seq_len,
    }


def format_table(result: dict) -> str:
    rows = [
        ("encoder linear params", f"{result['dense_encoder_params']:,}", f"{result['encoder_params']:,}"),
        ("all params", f"{result['dense_params']:,}", f"{result['params']:,}"),
        ("GFLOPs / forward (kept)", f"{result['dense_flops'] / 1e9:.2f}", f"{result['kept_flops'] / 1e9:.2f}"),
        ("  with padding", "", f"{result['flops'] / 1e9:.2f}"),
        ("latency ms (median)", f"{result['dense_latency_ms']:.1f}", f"{result['latency_ms']:.1f}"),
    ]
    lines = [f"{'':24} {'dense':>14} {'compact':>14}"] + [f"{a:24} {b:>14} {c:>14}" for a, b, c in rows]
    ideal = result["flops_ratio"]
    lines.append(
        f"speedup {result['speedup']:.2f}x (FLOPs-ideal {ideal:.2f}x, {result['speedup'] / ideal:.0%} of ideal) "
        f"on {result['device']}, {result.get('dtype', 'float32')}, batch {result['batch']} x length {result['seq_len']}"
        + (f" (torch.compile {result['compiled']})" if result.get("compiled") else "")
        + (f"; allocator: {result['allocator']}" if "allocator" in result else "")
    )
    if "floor_latency_ms" in result:
        lines.append(
            f"floor: one head (QK 1, VO 1) and one FFN neuron per layer runs in {result['floor_latency_ms']:.1f} ms, "
            f"so no sparsity gets past {result['speedup_ceiling']:.1f}x here "
            f"(embeddings, LayerNorms, residual adds and softmaxes do not shrink)"
        )
    return "\n".join(lines)

"""Dense vs compact under onnxruntime, fp32 and int8: `python -m grain.bench <run> --runtime onnxruntime`.

Both models are exported the same way (`grain.deploy.onnx.export_onnx`: the torch.export-based ONNX
exporter, fp32, dynamic batch and length) into a temporary folder, each also dynamically quantized to
int8 (`grain.deploy.quantize.quantize_int8`), and the four files are timed with onnxruntime at the bench
shape in alternating rounds (dense fp32, dense int8, compact fp32, compact int8, again), on CPU with as
many intra-op threads as torch uses, or with the CUDA provider where the device is a GPU and onnxruntime
has it (the onnxruntime-gpu package; int8 is timed on CPU only: the dynamically quantized operators are
CPU kernels). FLOPs and parameter counts are those of the PyTorch models (as in `compare_models`); the
fp32 numbers are the result's top level, with the same keys, so `format_table` prints them, with the
runtime in the device column, and `grain.bench` stores the result in summary.json the way it stores
PyTorch timings (`measurement_key`), under `bench/<cpu or the GPU>-float32-<batch>x<len>-onnxruntime`:
`cpu` whenever the CPU provider ran it. The int8 numbers are under `int8` (`format_int8`).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from torch.utils import benchmark

from grain.deploy.onnx import export_onnx, require
from grain.deploy.onnx_model import ort_session
from grain.deploy.quantize import quantize_int8
from grain.measure.compare import comparison, device_name
from grain.measure.flops import dummy_inputs


def providers_for(device: torch.device) -> list[str]:
    """onnxruntime's CUDA provider (then CPU) for a GPU device where it is built in, else CPU."""
    import onnxruntime  # noqa: PLC0415  (the export extra, optional: grain runs without it)

    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_latency(sess, feeds: dict, min_run_time: float) -> float:
    """Median ms of one `sess.run` on `feeds` (numpy), after a warm-up."""
    for _ in range(3):
        sess.run(None, feeds)
    timer = benchmark.Timer(stmt="sess.run(None, feeds)", globals={"sess": sess, "feeds": feeds})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def compare_onnx(
    dense, compact, batch: int, seq_len: int, min_run_time: float = 3.0, rounds: int = 3,
    device: torch.device | str = "cpu", int8: bool = True,
) -> dict:
    """`compare_models`' numbers with the latency of both models exported to ONNX and run by
    onnxruntime on `device` (alternating rounds, each model's median round), and with `int8` the same
    for both models dynamically quantized, under `int8` ({"dense_latency_ms", "latency_ms", "speedup",
    "latency_rounds_ms"}; "speedup" is the int8 dense over the int8 compact model)."""
    require("onnx", "onnxscript", "onnxruntime")
    import onnxruntime  # noqa: PLC0415  (the export extra, optional: grain runs without it)

    device = torch.device(device)
    dense, compact = dense.to("cpu", torch.float32).eval(), compact.to("cpu", torch.float32).eval()
    inputs = {name: t.numpy() for name, t in dummy_inputs(compact, batch, seq_len).items()}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="grain-onnx-") as folder:
        sessions = {}
        for name, model in (("dense", dense), ("compact", compact)):
            path = export_onnx(model, Path(folder) / f"{name}.onnx")
            sessions[name] = ort_session(path, threads, providers_for(device))
            if int8:
                sessions[f"{name}-int8"] = ort_session(quantize_int8(path, Path(folder) / f"{name}-int8.onnx"), threads)
        provider = sessions["compact"].get_providers()[0]
        rounds_ms = {name: [] for name in sessions}
        feeds = {name: {i.name: inputs[i.name] for i in sess.get_inputs()} for name, sess in sessions.items()}
        for _ in range(rounds):
            for name, sess in sessions.items():
                rounds_ms[name].append(session_latency(sess, feeds[name], min_run_time / rounds))
    where = device_name(torch.device("cpu")) if provider == "CPUExecutionProvider" else str(device)
    result = {
        **comparison(dense, compact, batch, seq_len, {"dense": rounds_ms["dense"], "compact": rounds_ms["compact"]}),
        "device": f"{where}, onnxruntime {onnxruntime.__version__} {provider}",
        "dtype": "float32",
        "runtime": "onnxruntime",
        "provider": provider,
    }
    if int8:
        dense_ms, compact_ms = (statistics.median(rounds_ms[f"{n}-int8"]) for n in ("dense", "compact"))
        result["int8"] = {
            "dense_latency_ms": dense_ms, "latency_ms": compact_ms, "speedup": dense_ms / compact_ms,
            "latency_rounds_ms": {"dense": rounds_ms["dense-int8"], "compact": rounds_ms["compact-int8"]},
            "device": f"{device_name(torch.device('cpu'))}, onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
        }
    return result


def format_int8(result: dict) -> str:
    """The four onnxruntime latencies side by side: median and min-max of the rounds' medians, ms."""
    rows = [
        ("fp32", result["latency_rounds_ms"]),
        ("int8 (dynamic)", result["int8"]["latency_rounds_ms"]),
    ]
    lines = [f"onnxruntime, batch {result['batch']} x length {result['seq_len']}, ms per forward "
             f"(median of {len(result['latency_rounds_ms']['compact'])} alternating rounds, min-max):"]
    lines.append(f"  {'':16} {'dense':>22} {'compact':>22} {'speedup':>8}")
    for label, rounds in rows:
        cells = [f"{statistics.median(r):.1f} ({min(r):.1f}-{max(r):.1f})" for r in (rounds["dense"], rounds["compact"])]
        speedup = statistics.median(rounds["dense"]) / statistics.median(rounds["compact"])
        lines.append(f"  {label:16} {cells[0]:>22} {cells[1]:>22} {speedup:>7.2f}x")
    if result["provider"] != "CPUExecutionProvider":  # fp32 ran on the GPU, int8 on the CPU
        lines.append(f"  fp32 on {result['device']}; int8 on {result['int8']['device']}")
    else:
        gain = result["latency_ms"] / result["int8"]["latency_ms"]
        dense_gain = result["dense_latency_ms"] / result["int8"]["dense_latency_ms"]
        lines.append(f"  int8 over fp32: dense {dense_gain:.2f}x, compact {gain:.2f}x")
    return "\n".join(lines)

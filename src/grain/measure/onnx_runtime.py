"""Dense vs compact under onnxruntime: `python -m grain.bench <run> --runtime onnxruntime`.

Both models are exported the same way (`grain.deploy.onnx.export_onnx`: the torch.export-based ONNX
exporter, fp32, dynamic batch and length) into a temporary folder and timed with onnxruntime at the
bench shape, on CPU with as many intra-op threads as torch uses, or with the CUDA provider where the
device is a GPU and onnxruntime has it (the onnxruntime-gpu package). FLOPs and parameter counts are
those of the PyTorch models (as in `compare_models`); the result has the same keys, so
`format_table` prints it, with the runtime in the device column, and `grain.bench` stores it in
summary.json the way it stores PyTorch timings (`measurement_key`), under
`bench/<cpu or the GPU>-float32-<batch>x<len>-onnxruntime`: `cpu` whenever the CPU provider ran it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch.utils import benchmark

from grain.deploy.onnx import INPUT_NAMES, export_onnx, require
from grain.measure.compare import comparison, device_name
from grain.measure.flops import dummy_inputs


def providers_for(device: torch.device) -> list[str]:
    """onnxruntime's CUDA provider (then CPU) for a GPU device where it is built in, else CPU."""
    import onnxruntime  # noqa: PLC0415  (the export extra, optional: grain runs without it)

    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(path: str | Path, device: torch.device, threads: int | None = None):
    import onnxruntime  # noqa: PLC0415  (the export extra, optional: grain runs without it)

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=providers_for(device))


def session_latency(sess, feeds: dict, min_run_time: float) -> float:
    """Median ms of one `sess.run` on `feeds` (numpy), after a warm-up."""
    for _ in range(3):
        sess.run(None, feeds)
    timer = benchmark.Timer(stmt="sess.run(None, feeds)", globals={"sess": sess, "feeds": feeds})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def compare_onnx(
    dense, compact, batch: int, seq_len: int, min_run_time: float = 3.0, rounds: int = 3,
    device: torch.device | str = "cpu",
) -> dict:
    """`compare_models`' numbers with the latency of both models exported to ONNX and run by
    onnxruntime on `device` (alternating rounds, each model's median round)."""
    require("onnx", "onnxscript", "onnxruntime")
    import onnxruntime  # noqa: PLC0415  (the export extra, optional: grain runs without it)

    device = torch.device(device)
    dense, compact = dense.to("cpu", torch.float32).eval(), compact.to("cpu", torch.float32).eval()
    feeds = {name: t.numpy() for name, t in dummy_inputs(compact, batch, seq_len).items() if name in INPUT_NAMES}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="grain-onnx-") as folder:
        sessions = {
            name: session(export_onnx(model, Path(folder) / f"{name}.onnx"), device, threads)
            for name, model in (("dense", dense), ("compact", compact))
        }
        provider = sessions["compact"].get_providers()[0]
        rounds_ms = {"dense": [], "compact": []}
        for _ in range(rounds):
            for name, sess in sessions.items():
                rounds_ms[name].append(session_latency(sess, feeds, min_run_time / rounds))
    where = device_name(torch.device("cpu")) if provider == "CPUExecutionProvider" else str(device)
    return {
        **comparison(dense, compact, batch, seq_len, rounds_ms),
        "device": f"{where}, onnxruntime {onnxruntime.__version__} {provider}",
        "dtype": "float32",
        "runtime": "onnxruntime",
        "provider": provider,
    }

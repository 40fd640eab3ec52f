"""`python -m grain.bench <run dir or compact model dir>`: params, FLOPs and latency, dense vs compact.

Given a run dir (with summary.json), it compares `<run>/compact` with the run's teacher (same
architecture as the unpruned student) and writes the numbers into summary.json under a key of their
own, `bench/<device>-<dtype>-<batch>x<len>[-compiled-<mode>][-system-allocator][-onnxruntime]`
(`measurement_key`), never into the run's own `compact` section; a later measurement of the same
setting replaces that key only. Latency is each model's median over alternating rounds (each round
a median); the spread reported is the min and max of those rounds (`latency_spread`).
Given a model dir, `--dense <dir or hub name>` names the reference model.
`--runtime onnxruntime` exports both to ONNX (`grain.deploy.onnx`), quantizes each to int8 as well
(`grain.deploy.quantize`), and times the four with onnxruntime instead (`grain.measure.onnx_runtime`;
needs `pip install -e .[export]`).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from grain.deploy.onnx import require
from grain.errors import GrainError
from grain.measure.compare import compare_models, floor_latency, format_table
from grain.measure.onnx_runtime import compare_onnx, format_int8
from grain.measure.profile import format_op_table, op_times
from grain.models.backbone import resolve_pretrained
from grain.models.registry import load_saved_model
from grain.quiet import quiet_libraries
from grain.summary import SUMMARY_FILE, model_dir_of, read_summary, write_summary


def device_slug(name: str) -> str:
    """`cpu`, or a GPU's name in lower case with dashes (`nvidia-h200`)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def measurement_key(result: dict, device: str, compile: bool | str = False, system_allocator: bool = False) -> str:
    """Where summary.json keeps one `grain.bench` measurement: what was timed, on what, at which shape."""
    runtime = result.get("runtime", "torch")
    if runtime == "onnxruntime" and result.get("provider") == "CPUExecutionProvider":
        where = "cpu"  # onnxruntime without its CUDA provider runs on the CPU, whatever --device said
    elif device.startswith("cuda") and torch.cuda.is_available():
        where = device_slug(torch.cuda.get_device_name(torch.device(device)))
    else:
        where = device_slug(device.split(":")[0])
    key = f"bench/{where}-{result.get('dtype', 'float32')}-{result['batch']}x{result['seq_len']}"
    if compile:
        key += f"-compiled-{'default' if compile is True else compile}"
    if system_allocator and where == "cpu" and runtime != "onnxruntime":
        key += "-system-allocator"
    if runtime == "onnxruntime":
        key += "-onnxruntime"
    return key


def latency_spread(result: dict) -> dict:
    """The min and max of each model's per-round medians, and of the per-round speedups (rounds alternate
    dense and compact, so round i of one is timed beside round i of the other)."""
    rounds = result["latency_rounds_ms"]
    speedups = [d / c for d, c in zip(rounds["dense"], rounds["compact"])]
    return {
        "latency_spread": f"min-max over {len(rounds['compact'])} rounds (each round a median); latency_ms is their median",
        "latency_ms_min": min(rounds["compact"]),
        "latency_ms_max": max(rounds["compact"]),
        "dense_latency_ms_min": min(rounds["dense"]),
        "dense_latency_ms_max": max(rounds["dense"]),
        "speedup_rounds": speedups,
        "speedup_min": min(speedups),
        "speedup_max": max(speedups),
    }


def format_spread(result: dict) -> str:
    return (
        f"spread, {result['latency_spread']}: "
        f"dense {result['dense_latency_ms_min']:.2f}-{result['dense_latency_ms_max']:.2f} ms, "
        f"compact {result['latency_ms_min']:.2f}-{result['latency_ms_max']:.2f} ms, "
        f"speedup per round {result['speedup_min']:.2f}-{result['speedup_max']:.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grain.bench", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a run dir (with summary.json) or a compact model dir")
    parser.add_argument("--dense", help="reference dense model (default: the run's teacher)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="default: 32 on CPU, 128 on GPU")
    parser.add_argument("--seq-len", type=int, help="default: 128 on CPU, 512 on GPU")
    parser.add_argument("--min-run-time", type=float, default=3.0, help="seconds of timing per model")
    parser.add_argument(
        "--compile", nargs="?", const="default", default=False, metavar="MODE",
        help="time torch.compile'd models (both); MODE: default, reduce-overhead (CUDA graphs), max-autotune",
    )
    parser.add_argument(
        "--system-allocator", action="store_true",
        help="leave glibc malloc as it is (default: keep freed buffers, see grain.bench.latency.retain_freed_memory)",
    )
    parser.add_argument(
        "--floor", action="store_true",
        help="also time a compact model keeping one unit per layer: the speedup no sparsity can exceed here",
    )
    parser.add_argument(
        "--profile", action="store_true",
        help="also print where each forward spends its time, by operator (torch.profiler)",
    )
    parser.add_argument(
        "--runtime", choices=("torch", "onnxruntime"), default="torch",
        help="onnxruntime: time both models exported to ONNX, fp32 and dynamically quantized int8 "
        "(fp32 also on the CUDA provider on a GPU where installed)",
    )
    args = parser.parse_args(argv)
    quiet_libraries()
    on_onnx = args.runtime == "onnxruntime"
    if on_onnx and (args.compile or args.floor or args.profile):
        parser.error("--compile, --floor and --profile time PyTorch models; leave them out with --runtime onnxruntime")
    on_gpu = args.device.startswith("cuda")
    batch = args.batch or (128 if on_gpu else 32)
    seq_len = args.seq_len or (512 if on_gpu else 128)

    path = Path(args.path)
    if not path.exists():
        print(f"grain.bench: error: {path} does not exist; give a run dir (with summary.json) or a compact model dir",
              file=sys.stderr)
        return 2
    summary = read_summary(path) if (path / SUMMARY_FILE).exists() else None
    compact_dir = model_dir_of(path)
    dense_ref = args.dense or (summary or {}).get("teacher", {}).get("path")
    problem = None
    if dense_ref is None:
        problem = "give --dense <model> to compare with"
    elif not (compact_dir / "config.json").exists():
        problem = f"no saved model at {compact_dir}" + (
            " (did the run reach its compact stage? see run.log beside summary.json)" if summary is not None else ""
        )
    elif not args.dense and Path(dense_ref).is_absolute() and not Path(dense_ref).exists():  # not a hub name
        problem = (
            f"the run's teacher {dense_ref} is gone (teacher cache cleared or moved); "
            "give --dense <fine-tuned model dir or hub name>"
        )
    if problem:
        print(f"grain.bench: error: {problem}", file=sys.stderr)
        return 2
    try:
        if on_onnx:
            require("onnx", "onnxscript", "onnxruntime")
        compact = load_saved_model(compact_dir)
        dense = load_saved_model(resolve_pretrained(dense_ref))  # a `package:` teacher: the dir it ships
        if on_onnx:  # exported and run in fp32 (onnxruntime's CPU kernels have no bf16 matmuls)
            result = compare_onnx(dense, compact, batch, seq_len, min_run_time=args.min_run_time, device=args.device)
    except (OSError, GrainError) as err:
        print(f"grain.bench: error: {err}", file=sys.stderr)
        return 2
    if not on_onnx:
        compact, dense = compact.to(args.device), dense.to(args.device)
        if on_gpu:  # bf16 as the paper's speed measurements on GPU
            compact, dense = compact.to(torch.bfloat16), dense.to(torch.bfloat16)
        result = compare_models(
            dense, compact, batch, seq_len, min_run_time=args.min_run_time, compile=args.compile,
            tune_allocator=not args.system_allocator,
        )
    if args.floor:
        floor_ms = floor_latency(dense, batch, seq_len, min_run_time=args.min_run_time / 3, compile=args.compile)
        result.update(floor_latency_ms=floor_ms, speedup_ceiling=result["dense_latency_ms"] / floor_ms)
    result.update(latency_spread(result))
    print(format_table(result))
    print(format_spread(result))
    if "int8" in result:
        print(format_int8(result))
    if args.profile:
        print("\nself time per forward pass, by operator:")
        print(format_op_table(op_times(dense, batch, seq_len), op_times(compact, batch, seq_len)))
    if summary is not None:
        key = measurement_key(result, args.device, args.compile, args.system_allocator)
        summary[key] = {**result, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_summary(path, summary)
        recorded = (summary.get("compact") or {}).get("speedup")
        print(f"updated {path / SUMMARY_FILE} [{key}]" + (
            f" (the run's own measurement stays under [compact]: speedup {recorded:.2f}x)" if recorded else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

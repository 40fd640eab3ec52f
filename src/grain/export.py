"""`python -m grain.export <run dir or compact model dir>`: the compact model for serving without PyTorch.

`--format onnx` (the default) writes `<compact dir>/onnx/model.onnx` (or `--out`) as
`grain.deploy.onnx.export_onnx` lays it out (the inputs the model's family reads; the head's outputs;
batch and length dynamic), runs it with onnxruntime on a padded batch of another shape than the one it
was exported with, and prints the largest absolute difference from the PyTorch model. `--opset N` asks
for another opset; the one printed is the one in the file.

`--quantize int8` also writes `model_int8.onnx` beside it (dynamic quantization, `grain.deploy.quantize`)
and, given a run dir (or its compact folder), evaluates the PyTorch compact model and both files on the run's evaluation split
with the task's own evaluator, printing each metric side by side; the numbers go into summary.json under
`export/onnx`.

`--target tei` writes a folder text-embeddings-inference serves with its ONNX backend
(`grain.deploy.tei`): `<run>/tei`, `<model dir>-tei` outside a run, or `--out` (a new folder).

Needs the `export` extra: `pip install -e .[export]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from grain.deploy.onnx import (
    CHECK_SHAPE,
    DEFAULT_OPSET,
    check_onnx,
    export_onnx,
    onnx_input_names,
    onnx_opset,
    output_names,
    require,
)
from grain.deploy.onnx_model import OnnxModel
from grain.deploy.quantize import quantize_int8
from grain.deploy.tei import write_tei_folder
from grain.errors import GrainError
from grain.models.backbone import load_tokenizer
from grain.models.registry import load_saved_model
from grain.quiet import quiet_libraries
from grain.stages.trainer import build_datamodule
from grain.summary import SUMMARY_FILE, model_dir_of, read_summary, write_summary
from grain.tasks.base import task_class
from grain.tasks.evaluate import evaluate

FORMATS = ("onnx",)  # the file formats, one module each in grain.deploy
TARGETS = ("tei",)  # the serving stacks a folder is laid out for, one module each in grain.deploy
QUANTIZATIONS = ("int8",)


def run_datamodule(run_dir: Path, tokenizer):
    """The run's task data module, from the resolved config summary.json keeps, for its evaluation split;
    and the task's metric."""
    config = read_summary(run_dir).get("config")
    if not config:
        raise GrainError(f"{run_dir / SUMMARY_FILE} has no config: the run's settings are needed to evaluate on its split")
    cfg = OmegaConf.create(config)
    task_class(cfg).check_data(cfg)  # data dir or hub reachable: one line before anything loads
    try:
        datamodule = build_datamodule(cfg, tokenizer, cfg.student.batch_size, cfg.student.max_train_samples)
    except InstantiationException as err:  # a GrainError raised while Hydra built the data module
        if isinstance(err.__cause__, GrainError):
            raise err.__cause__ from None
        raise
    return datamodule, cfg.task.metric


def evaluate_files(model, files: dict[str, Path], run_dir: Path, model_dir: Path) -> tuple[str, dict[str, float]]:
    """The run's metric on its (first) evaluation split, of the PyTorch `model` and of each ONNX file, by
    label; and the split's name."""
    datamodule, metric = run_datamodule(run_dir, load_tokenizer(str(model_dir)))
    split = datamodule.eval_splits[0]  # the one the run reports (not e.g. MNLI's mismatched)
    key = f"{split}/{metric}"
    scores = {"PyTorch fp32": evaluate(model, datamodule, "compact (PyTorch)", [split])[key]}
    for label, path in files.items():
        scores[f"onnxruntime {label}"] = evaluate(OnnxModel(path), datamodule, f"compact ({label})", [split])[key]
    return split, scores


def run_dir_of(path: Path, model_dir: Path) -> Path | None:
    """The run dir `path` is, or whose compact folder it is (None: a model dir outside a run)."""
    for candidate in (path, path.parent):
        if (candidate / SUMMARY_FILE).exists() and model_dir_of(candidate) == model_dir:
            return candidate
    return None


def export_onnx_files(model, out: Path, opset: int, quantize: str | None) -> dict[str, Path]:
    """Write the fp32 file at `out` (and with `quantize` the int8 one beside it), print what each is and
    its largest difference from PyTorch; {"fp32": path[, "int8": path]}."""
    export_onnx(model, out, opset=opset)
    files = {"fp32": out}
    if quantize:
        files["int8"] = quantize_int8(out, out.with_name(f"{out.stem}_int8.onnx"))
    batch, seq_len = CHECK_SHAPE
    for label, path in files.items():
        print(f"wrote {path} ({label}, {path.stat().st_size / 2**20:.1f} MiB)")
    print(
        f"opset {onnx_opset(out)}; inputs {', '.join(onnx_input_names(out))} [batch, sequence], outputs "
        f"{', '.join(output_names(model))}; batch and sequence length dynamic"
    )
    for label, path in files.items():
        print(f"max abs difference vs PyTorch on a padded {batch} x {seq_len} batch (onnxruntime, CPU), {label}: "
              f"{check_onnx(model, path):.2e}")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grain.export", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a run dir (with summary.json) or a saved compact model dir")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, help="also write a dynamically quantized file, and "
                        "(given a run dir) evaluate both on the run's evaluation split")
    parser.add_argument("--target", choices=TARGETS, help="lay out a folder for a serving stack instead "
                        "(tei: text-embeddings-inference's ONNX backend)")
    parser.add_argument("--out", help="the file to write (default: <compact dir>/onnx/model.onnx), or with "
                        "--target the folder (default: <run dir>/tei)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    args = parser.parse_args(argv)
    quiet_libraries()
    if args.target and args.quantize:
        parser.error("--target tei serves the fp32 file (TEI's ONNX backend runs float32 only); leave out --quantize")

    path = Path(args.path)
    if not path.exists():
        print(f"grain.export: error: {path} does not exist; give a run dir (with summary.json) or a compact model dir",
              file=sys.stderr)
        return 2
    model_dir = model_dir_of(path)
    run_dir = run_dir_of(path, model_dir)
    if not (model_dir / "config.json").exists():
        hint = " (did the run reach its compact stage? see run.log beside summary.json)" if model_dir != path else ""
        print(f"grain.export: error: no saved model at {model_dir}{hint}", file=sys.stderr)
        return 2
    try:
        require("onnx", "onnxscript", "onnxruntime")
        model = load_saved_model(model_dir)
        if args.target == "tei":
            default = run_dir / "tei" if run_dir else model_dir.with_name(f"{model_dir.name}-tei")
            out = Path(args.out) if args.out else default
            if out.resolve() == model_dir.resolve() or (out / "model.safetensors").exists():
                raise GrainError(f"--out {out} holds a model; give a new folder for the TEI layout")
            folder, diff = write_tei_folder(model, load_tokenizer(str(model_dir)), out, opset=args.opset, source=model_dir)
            batch, seq_len = CHECK_SHAPE
            print(f"wrote {folder} for text-embeddings-inference (onnx/model.onnx, config.json, tokenizer.json)")
            print(f"max abs difference vs PyTorch on a padded {batch} x {seq_len} batch (onnxruntime, CPU): {diff:.2e}")
            print(f"serve it: text-embeddings-router --model-id {folder}  (a TEI build with the ort backend)")
            return 0
        out = Path(args.out) if args.out else model_dir / "onnx" / "model.onnx"
        files = export_onnx_files(model, out, args.opset, args.quantize)
        if args.quantize and run_dir is None:
            print("no run dir given: not evaluated (give the run dir to compare the files' metrics on its split)")
        elif args.quantize:
            split, scores = evaluate_files(model, files, run_dir, model_dir)
            summary = read_summary(run_dir)
            metric = summary.get("metric_name", "metric")
            print(f"\n{metric} on the run's evaluation split ({split}):")
            for label, score in scores.items():
                print(f"  compact, {label:18} {score:.4f}")
            summary["export/onnx"] = {
                "files": {label: str(p) for label, p in files.items()}, "metric_name": metric, "split": split,
                "metrics": scores,
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            write_summary(run_dir, summary)
            print(f"updated {run_dir / SUMMARY_FILE} [export/onnx]")
    except (OSError, GrainError) as err:
        print(f"grain.export: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

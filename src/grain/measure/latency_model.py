"""A measured latency model of the compact model on one device (its command: `python -m grain.bench.latency_model`).

What it predicts: the forward time, in milliseconds, of a compact model (`grain.models.compact`)
of any structure, on one device, in the device's serving dtype, at one [batch, length] shape (the
compact stage's benchmark shape), as `grain.bench.latency.measure_latency` times it; and the dense
model's time measured the way the compact stage measures it, so that predicted speedups compare
with the compact stage's measured `compact.speedup` (same numerator, same denominator).

The formula follows the kernel plan the compact model runs on that device (`grain.models.kernels`):

    latency     = fixed + scale x sum over layers [ attention(layer) + ffn(FFN width of the layer) ]
    attention() = attention_empty                              (no head keeps a VO unit)
                = attention_base
                  + [the plan runs any group]  grouped + sum over groups (group + n * head(qk, vo))
                  + [any uniform head]         uniform + sum over uniform heads head(0, vo)
    ffn(width)  = the FFN table, linear between measured widths, at round_up(width) (0: no FFN)

- Groups: the heads that share one batched attention call, exactly as the device's plan lays them
  out (`head_groups`). CPU (`GroupedLayout`): heads of equal (QK slot, VO) widths share one call,
  a QK width of 1 takes a slot of 2, heads without QK units are "uniform" (no softmax, V of the mean
  hidden state) and run apart. GPU (`PaddedLayout`): every head of a bucket (usually the whole
  layer) padded to one width w, one SDPA call per bucket: a group of n heads of widths (w, w).
- `head(qk, vo)`: ms per head inside a group (its share of the fused projection, its scores,
  softmax and context, the copies into the group's batch), a table over the QK slot (rows from 1;
  row 0: uniform heads) and the VO width (columns), bilinear in between; `group`: ms per call
  (launch, reshapes, concatenation), fitted and kept at >= 0 (a call cost fitted below 0 is refitted
  at 0: a negative one made predictions worse on real structures, docs/measurements.md).
- `grouped`: what a layer pays once it runs any group (the batched output projection over the
  contexts); `uniform`: once it has uniform heads (the mean of the hidden states);
  `attention_base`: any layer with heads (the fused projection call, output bias, residual add and
  LayerNorm); `attention_empty`: a layer without heads (bias, residual add, LayerNorm).
- `fixed` and `scale` (`layer_scale`): embeddings, pooler, task head and per-forward overhead, and
  what a whole model costs beyond its sub-layers timed alone, which grows with their size (each
  layer's weights and activations read afresh, not from a warm cache): fitted by least squares
  (`fit_whole`) to the whole times of a compact model with every layer empty and of compact models
  cut from random masks at sparsities 0.5, 0.8, 0.9, 0.95 and 0.97, against their predicted
  sub-layers. (A fixed part alone, the median of those differences over 0.9-0.97, predicted trained
  4x structures 3-4 ms fast on this CPU: it grew from 6.2 ms at sparsity 0.97 to 7.8 ms at 0.9;
  docs/results/embedding_squad_retrieval.)
- `dense_latency_ms`: the dense HF model (`AutoModelForSequenceClassification.from_config`: the
  architecture the compact stage benchmarks; weights do not change the time), timed as
  `compare_models` times it (same `measure_latency`, dtype, shape, threads and, on CPU, glibc
  keeping freed buffers, `retain_freed_memory`); `dense_ms()` returns it.

How the parts are measured: every sub-layer is a real compact layer timed with
`torch.utils.benchmark` (median of blocked runs) in `rounds` interleaved rounds, keeping each
configuration's median round (as the compact stage keeps the median of its rounds; the least
round biased predictions low). The attention
parts are fitted by least squares (rows weighted by 1 / time) to sub-layers of n = 1, 2 and all
heads of each grid width (per-head costs and intercepts), of single-head groups of distinct widths
(the call cost) and of grouped plus uniform heads (the grouped and uniform parts apart), through
the same `head_groups` the prediction uses; the table is then clamped at 0 and made non-decreasing
in both widths. The FFN is timed at multiples of 8 (`ffn_grid`), the dense and the empty model
whole. On CPU glibc keeps freed buffers during the measurement, as in the compact
stage: without it every large attention buffer is page-faulted afresh (docs/measurements.md).

Limits: the fused projection's padding to a multiple of 8 columns and per-head costs between grid
widths are interpolated, not measured (odd widths run slower than the even ones around them in
MKL's batched matmuls, which matters only for layers of one or two tiny heads); a group's
time is taken as linear in its heads; what a whole model adds to its sub-layers timed alone (warm
caches) is taken as linear in their time (`scale`), fitted on random structures; DeBERTa's relative-position terms
are not modelled (it is predicted as BERT's compact layers); ModernBERT's sub-layers are timed as its first
layer's type (global), which costs what a sliding-window layer costs in the padded compact model (the window
is a band mask over full attention, not fewer keys); the GPU path follows the
padded plan with the same fit but has not been validated on a GPU here (no GPU on the machine this
was built on); predictions for a shape, dtype or device other than the key's are meaningless.
`--check` prints predicted vs measured ms for random GRAIN-like structures and for given compact
models (`--compact DIR ...`), timed interleaved in one process.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import platform
import random
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils import benchmark
from transformers import AutoModelForSequenceClassification

from grain.architectures import architecture_of
from grain.errors import GrainError, writing
from grain.measure.compare import device_name, serving_defaults
from grain.measure.latency import measure_latency, retain_freed_memory
from grain.models.compact.kernels import PaddedLayout, plan_head_groups, round_up, use_padded_plan
from grain.models.masks import EncoderShape, KeptStructure
from grain.models.registry import compact_families, compact_family
from grain.models.slicing import compact_config, compact_from_masked

# In the cache key: older models are measured again (1: additive heads, no dense measurement; 2: an earlier
# fit; 3: no self-check; 4: a fixed part without the sub-layers' scale).
MODEL_VERSION = 5
# The self-check of a measurement (`measurement_problems`): on CPU the process had at least SHARE_BOUND of
# the CPU time its threads asked for while timing (another process on the cores halves it); the whole
# models' repeat rounds agree within SPREAD_BOUND of their median (the inner rounds: one odd round is
# dropped by the median anyway); each whole compact model's time is predicted within FIT_BOUND of the
# dense model's time. Tiny models at tiny shapes (sub-millisecond parts) reach about half of them on an
# idle machine here, the spread once 0.52 (docs/measurements.md); the CPU share is what a busy CPU shows.
SHARE_BOUND = 0.8
SPREAD_BOUND = 1.0
FIT_BOUND = 0.25


@dataclass
class LatencyModel:
    """Measured parts of a compact model's forward time, in milliseconds (see the module docstring)."""

    key: dict                     # version, device, dtype, torch version, batch, seq_len, model type, dense shape
    fixed_ms: float
    attention_empty_ms: float
    attention_base_ms: float
    head_widths: list[int]        # table rows: 0 (uniform heads), then the QK slots measured
    head_ms: list[list[float]]    # [row][VO column]: ms per head in a group (row 0: per uniform head)
    ffn_widths: list[int]         # multiples of 8 (the compact FFN's padded width), from 0
    ffn_ms: list[float]           # the FFN sub-layer at each width (0: no FFN, bias + residual + LayerNorm)
    group_ms: float = 0.0         # per batched attention call (group of heads)
    grouped_ms: float = 0.0       # once per layer that runs any group
    uniform_ms: float = 0.0       # once per layer with uniform heads (CPU plan)
    plan: str = "grouped"         # the device's kernel plan: "grouped" (CPU) or "padded" (GPU)
    dense_latency_ms: float | None = None  # the dense HF model as the compact stage measures it
    vo_widths: list[int] | None = None     # table columns: the VO widths measured (None: head_widths[1:])
    layer_scale: float = 1.0      # a whole model's sub-layers over their time alone (`fit_whole`)
    # how far to trust it (`Measurement`): the whole models' round spread, the fit error, where and when
    measurement: dict | None = None

    def __post_init__(self):
        if self.vo_widths is None:
            self.vo_widths = list(self.head_widths[1:])

    # --- prediction ------------------------------------------------------------------------------
    def head_groups(self, qk_dims: list[int], vo_dims: list[int]) -> tuple[list[tuple[int, int, int]], list[int]]:
        """How the device's kernel plan runs these heads: ([(heads n, QK slot, VO slot) per batched
        attention call], [VO width of each uniform head]); heads without VO units are gone."""
        if self.plan == "padded":
            buckets = PaddedLayout.plan(qk_dims, vo_dims).buckets
            return [(len(b.heads), b.width, b.width) for b in buckets], []
        groups = [(len(g.heads), g.qk_slot, g.vo_slot) for g in plan_head_groups(qk_dims, vo_dims)]
        return groups, [v for q, v in zip(qk_dims, vo_dims) if q == 0 and v > 0]

    def head_cost(self, qk: int, vo: int) -> float:
        """ms of one head of QK slot `qk` and VO width `vo` (>= 1) inside a group (qk 0: of one
        uniform head), bilinear between the measured widths (clamped at the grid's ends)."""
        return _bilinear(self.head_ms, self.head_widths, self.vo_widths, qk, vo)

    def group_cost(self, heads: int, qk: int, vo: int) -> float:
        """ms of one batched attention call over `heads` heads of QK slot `qk` (>= 1) and VO width `vo`."""
        return self.group_ms + heads * self.head_cost(qk, vo)

    def attention_cost(self, qk_dims: list[int], vo_dims: list[int]) -> float:
        """ms of one attention sub-layer whose heads have these QK / VO widths (a head without VO
        units is gone), by the module docstring's formula over the plan's groups."""
        groups, uniform = self.head_groups(qk_dims, vo_dims)
        if not groups and not uniform:
            return self.attention_empty_ms
        cost = self.attention_base_ms
        if groups:
            cost += self.grouped_ms + sum(self.group_cost(n, q, v) for n, q, v in groups)
        if uniform:
            cost += self.uniform_ms + sum(self.head_cost(0, v) for v in uniform)
        return cost

    def ffn_cost(self, width: int) -> float:
        """ms of one FFN sub-layer keeping `width` neurons (run at round_up(width) columns), linear
        between the measured widths."""
        i0, i1, a = _bracket(self.ffn_widths, round_up(width) if width > 0 else 0)
        return (1 - a) * self.ffn_ms[i0] + a * self.ffn_ms[i1]

    def predict(self, qk_dims: list[list[int]], vo_dims: list[list[int]], ffn_dims: list[int]) -> float:
        """Predicted ms of a compact model with these per-layer structures (as GrainBertConfig holds them):
        fixed + layer_scale x its sub-layers (`sublayers_ms`)."""
        return self.fixed_ms + self.layer_scale * self.sublayers_ms(qk_dims, vo_dims, ffn_dims)

    def sublayers_ms(self, qk_dims: list[list[int]], vo_dims: list[list[int]], ffn_dims: list[int]) -> float:
        """ms of these per-layer structures' sub-layers, each as timed alone (attention_cost + ffn_cost)."""
        return sum(self.attention_cost(qk, vo) + self.ffn_cost(ffn) for qk, vo, ffn in zip(qk_dims, vo_dims, ffn_dims))

    def predict_masks(self, masks: dict[str, torch.Tensor], shape: EncoderShape) -> float:
        """Predicted ms of the compact model cut by unit masks ({"qk"|"vo": [layers, hidden], "ffn": [layers, ffn]})."""
        kept = KeptStructure.of(masks, shape)
        return self.predict(kept.qk, kept.vo, kept.ffn)

    def compact_dense_ms(self) -> float:
        """Predicted ms of the compact form of the unpruned model (every head, every neuron)."""
        k = self.key
        heads, d = k["num_heads"], k["hidden_size"] // k["num_heads"]
        layers = k["num_layers"]
        return self.predict([[d] * heads] * layers, [[d] * heads] * layers, [k["intermediate_size"]] * layers)

    def floor_ms(self) -> float:
        """Predicted ms of the least compact model pruning leaves: one head (QK 1, VO 1) and one FFN neuron
        per layer (embeddings, LayerNorms, residual adds and the task head do not shrink)."""
        layers = self.key["num_layers"]
        return self.predict([[1]] * layers, [[1]] * layers, [1] * layers)

    def max_speedup(self) -> float:
        """The speedup over the dense model no pruning gets past on this device and shape: dense / floor."""
        return self.dense_ms() / self.floor_ms()

    def dense_ms(self) -> float:
        """ms of the dense model as the compact stage measures it (its `compact.dense_latency_ms`), the
        denominator of predicted speedups; a model without that measurement (hand-made) falls back to
        the predicted compact form of the unpruned model."""
        return self.compact_dense_ms() if self.dense_latency_ms is None else self.dense_latency_ms

    # --- storage ---------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with writing(path):
            tmp.write_text(json.dumps(asdict(self), indent=2))
            tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "LatencyModel":
        return cls(**json.loads(Path(path).read_text()))


def _bilinear(table: list[list[float]], rows: list[int], columns: list[int], qk: int, vo: int) -> float:
    """table[row][column] at (qk, vo), bilinear; row 0 is the uniform heads' (qk 0), rows from 1 the QK slots."""
    j0, j1, b = _bracket(columns, vo)
    if qk <= 0:
        row = table[0]
        return (1 - b) * row[j0] + b * row[j1]
    i0, i1, a = _bracket(rows[1:], qk)
    t = table[1:]
    return (1 - a) * ((1 - b) * t[i0][j0] + b * t[i0][j1]) + a * ((1 - b) * t[i1][j0] + b * t[i1][j1])


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


def model_key(shape: EncoderShape, device: torch.device, dtype: torch.dtype, batch: int, seq_len: int,
              model_type: str = "bert") -> dict:
    """What the timings depend on: the cache key (the dense model's family: its dense time)."""
    return {
        "version": MODEL_VERSION, "device": device_name(device), "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__, "batch": batch, "seq_len": seq_len, "model_type": model_type,
        "num_layers": shape.num_layers, "hidden_size": shape.hidden_size, "num_heads": shape.num_heads,
        "intermediate_size": shape.intermediate_size,
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


def ffn_grid(limit: int) -> list[int]:
    """0 and multiples of 8 (the widths the compact FFN runs at) up to round_up(limit): 8, then
    16, 24, 32, 48, 64, 96, ... (each power of 2 and 1.5x it; pruning leaves FFNs mostly narrow, where
    the time is least linear in the width), and 3/4 of the limit."""
    grid, width = {0, 8, round_up(limit), round_up(3 * limit // 4)}, 16
    while width < limit:
        grid |= {width, round_up(3 * width // 2)}
        width *= 2
    return sorted(w for w in grid if w <= round_up(limit))


def head_grid(head_dim: int, plan: str) -> tuple[list[int], list[int]]:
    """(rows, VO columns) of the per-head table: rows 0 (uniform) then the QK slots the plan runs
    (grouped: from 2, a QK width of 1 takes a slot of 2; padded: multiples of 8)."""
    if plan == "padded":
        widths = sorted({round_up(w) for w in width_grid(head_dim)})
        return [0] + widths, widths
    return [0] + [w for w in width_grid(head_dim) if w >= 2], width_grid(head_dim)


# --- fitting the attention parts -----------------------------------------------------------------

_SCALARS = ("attention_base_ms", "grouped_ms", "uniform_ms", "group_ms")


def attention_configs(shape: EncoderShape, plan: str) -> list[tuple[list[int], list[int]]]:
    """The attention sub-layers (QK widths, VO widths) timed to fit the parts, at grid widths only:
    n = 1, 2 and all heads of each cell (per-head costs: real groups are mostly small), single-head
    groups of distinct cells (the call cost), each cell's lone head beside a uniform head and half
    grouped, half uniform layers (the grouped and uniform parts apart)."""
    heads = shape.num_heads
    rows, columns = head_grid(shape.head_dim, plan)
    cells = [(q, v) for q in rows for v in columns]
    if plan == "padded":
        cells = [(w, w) for w in columns]
    configs = [([q] * n, [v] * n) for q, v in cells for n in sorted({1, min(2, heads), heads})]
    grouped = [c for c in cells if c[0] > 0]
    if plan == "grouped":
        for k in sorted({2, max(2, heads // 2), heads}):  # k single-head groups of distinct widths
            if k <= heads and k <= len(grouped):
                step = len(grouped) / k
                picked = [grouped[int(i * step)] for i in range(k)]
                configs.append(([q for q, _ in picked], [v for _, v in picked]))
        u = columns[len(columns) // 2]
        if heads >= 2:  # each grouped cell's lone head with a uniform head: the uniform part, paired with n = 1
            configs += [([q, 0], [v, u]) for q, v in grouped]
        if heads >= 4:
            half = heads // 2
            for q, v in (grouped[0], grouped[len(grouped) // 2], grouped[-1]):
                configs.append(([q] * half + [0] * (heads - half), [v] * half + [u] * (heads - half)))
    elif heads > 1 and len(columns) > 1:  # two buckets: wide heads among narrow ones (PaddedLayout's waste rule)
        for wide in (1, 2):
            configs.append(([columns[-1]] * wide + [columns[0]] * (heads - wide),) * 2)
    return configs


def _design_row(model: LatencyModel, qk_dims: list[int], vo_dims: list[int]) -> dict:
    """The parts (name, or (row, column) of the per-head table -> count) a sub-layer of grid widths
    pays under `model`'s plan: the prediction's formula, written as a linear function of the parts."""
    rows, columns = model.head_widths, model.vo_widths
    groups, uniform = model.head_groups(qk_dims, vo_dims)
    parts = {"attention_base_ms": 1.0}
    if groups:
        parts["grouped_ms"] = 1.0
        parts["group_ms"] = float(len(groups))
    if uniform:
        parts["uniform_ms"] = 1.0
    for n, q, v in groups:
        cell = (rows.index(q), columns.index(v))
        parts[cell] = parts.get(cell, 0.0) + n
    for v in uniform:
        cell = (0, columns.index(v))
        parts[cell] = parts.get(cell, 0.0) + 1
    return parts


def fit_attention(model: LatencyModel, configs: list[tuple[list[int], list[int]]], times_ms: list[float]) -> float:
    """Set `model`'s attention parts (scalars and per-head table) by least squares to the timed
    sub-layers (rows weighted by 1 / time: every configuration counts by its relative error); a
    call cost fitted below 0 is refitted at 0. The table is then clamped at 0 and made non-decreasing
    in both widths. Returns the call cost as first fitted."""
    rows = [_design_row(model, qk, vo) for qk, vo in configs]
    for name in ("grouped_ms", "group_ms"):  # a part every timed sub-layer pays once is the base's (the padded plan)
        if all(row.get(name, 0.0) == row["attention_base_ms"] for row in rows):
            for row in rows:
                row.pop(name, None)
    values = _least_squares(rows, times_ms)
    fitted_group_ms = values.get("group_ms", 0.0)
    if fitted_group_ms < 0:
        for row in rows:
            row.pop("group_ms", None)
        values = _least_squares(rows, times_ms)
    for name in _SCALARS:
        setattr(model, name, values.get(name, 0.0))
    table = [[max(values.get((i, j), 0.0), 0.0) for j in range(len(model.vo_widths))]
             for i in range(len(model.head_widths))]
    if model.plan == "padded":  # only (w, w) is measured and used: a cell costs its padded width's head
        diagonal = [table[j + 1][j] for j in range(len(model.vo_widths))]
        table = [[diagonal[max(i - 1, j)] for j in range(len(diagonal))] for i in range(len(model.head_widths))]
    model.head_ms = [monotone(table[0])] + monotone_2d(table[1:])
    return fitted_group_ms


def _least_squares(rows: list[dict], times_ms: list[float]) -> dict:
    names = sorted({name for row in rows for name in row}, key=str)
    a = torch.tensor([[row.get(name, 0.0) for name in names] for row in rows], dtype=torch.float64)
    b = torch.tensor(times_ms, dtype=torch.float64)
    weight = 1.0 / b.clamp_min(1e-6)
    solution = torch.linalg.lstsq(a * weight[:, None], (b * weight)[:, None], driver="gelsd").solution[:, 0]
    return dict(zip(names, solution.tolist()))


# --- measurement ---------------------------------------------------------------------------------


def _timing_model(hf_config, shape: EncoderShape, qk_dims: list[list[int]], vo_dims: list[list[int]],
                  ffn_dims: list[int], head: str | None = None, **settings):
    """A compact model of `hf_config`'s family with these per-layer widths (compact form: heads with VO
    units), on the CPU in fp32 (the caller moves it): its base model, or with `head` ("ForSequenceClassification")
    that head. Families whose compact base model has no `sublayers` (DeBERTa) are timed as BERT's
    compact layers (their relative-position terms are not modelled). `settings`: config values over the
    family's (a tiny vocabulary where only the layers are timed)."""
    arch = architecture_of(hf_config)
    family = compact_family(arch)
    layers = len(ffn_dims)
    kept = KeptStructure(qk_dims, vo_dims, ffn_dims)
    with warnings.catch_warnings():  # uniform heads: zero-row Q and K projections
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        if not hasattr(family.model, "sublayers"):
            bert = compact_families()["bert"]
            config = bert.config(
                hidden_size=shape.hidden_size, num_attention_heads=shape.num_heads,
                intermediate_size=shape.intermediate_size, num_hidden_layers=layers, qk_dims=qk_dims, vo_dims=vo_dims,
                ffn_dims=ffn_dims, original_head_dim=shape.head_dim, **settings,
            )
            family = bert
        else:
            if getattr(hf_config, "layer_types", None):  # the first layer's type (ModernBERT: global)
                settings.setdefault("layer_types", list(hf_config.layer_types[:layers]))
            if arch.rotary:  # the first pairs of each head (which pairs does not change the time)
                settings["rotary_pairs"] = [[list(range(q // 2)) for q in layer] for layer in qk_dims]
            config = compact_config(hf_config, kept, num_hidden_layers=layers, **settings)
        cls = family.model if head is None else family.head_suffixes()[head]
        return cls(config).eval()


def _sublayers(hf_config, shape: EncoderShape, qk: list[int], vo: list[int], ffn: int, hidden: torch.Tensor,
               attention_mask: torch.Tensor):
    """(attention, FFN) sub-layer calls of one compact layer of these widths, of `hf_config`'s family
    (`sublayers` of its compact base model), on `hidden` [batch, seq, hidden] and its device and dtype."""
    # a tiny vocabulary (only the layer is timed), so no special token ids within it
    names = (f"{kind}_token_id" for kind in ("pad", "bos", "eos", "cls", "sep"))
    no_tokens = {name: None for name in names if hasattr(hf_config, name)}
    model = _timing_model(hf_config, shape, [qk], [vo], [ffn], vocab_size=8, **no_tokens)
    return model.to(device=hidden.device, dtype=hidden.dtype).sublayers(hidden, attention_mask)


@torch.inference_mode()
def _time(fn, min_run_time: float, device: torch.device, warmup: int = 3) -> float:
    """Median ms of `fn()` over torch.utils.benchmark's blocked runs of at least `min_run_time`
    seconds (its timer synchronizes CUDA), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def interleaved_ms(parts: dict, rounds: int, min_run_time: float, device: torch.device) -> dict:
    """{name: median over `rounds` rounds of its median ms}, each round timing every part once in
    turn (`min_run_time` seconds per part in all): a slow spell of a shared machine falls on one
    round of every part rather than on all rounds of some, and the median round drops it."""
    rounds_ms = {name: [] for name in parts}
    for round_ in range(max(1, rounds)):
        for name, fn in parts.items():
            rounds_ms[name].append(_time(fn, min_run_time / max(1, rounds), device, warmup=3 if round_ == 0 else 1))
    return {name: statistics.median(values) for name, values in rounds_ms.items()}


def spread(values: list[float]) -> float:
    """How far repeat rounds disagree, relative to their median: the second largest less the second least
    (from 4 rounds on; the largest less the least before), so that one odd round does not count."""
    ordered = sorted(values)
    low, high = (ordered[1], ordered[-2]) if len(ordered) >= 4 else (ordered[0], ordered[-1])
    return (high - low) / max(statistics.median(ordered), 1e-9)


class CpuShare:
    """The CPU time a process used while timing, over the wall time x its threads (`share`): about 1 when
    its threads had the cores to themselves, 0.5 when another process took half of them."""

    def __init__(self):
        self.cpu = self.wall = 0.0

    @contextlib.contextmanager
    def counting(self):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.cpu += time.process_time() - cpu
            self.wall += time.perf_counter() - wall

    @property
    def share(self) -> float:
        return self.cpu / max(self.wall * torch.get_num_threads(), 1e-9)


def dense_model(hf_config, device: torch.device, dtype: torch.dtype):
    """The dense model the compact stage compares against, built from the config (weights do not
    change its time): a sequence classifier of the config's family, in the serving dtype, eval mode."""
    return AutoModelForSequenceClassification.from_config(hf_config).to(device=device, dtype=dtype).eval()


def measure_model(hf_config, device: torch.device, batch: int, seq_len: int, min_run_time: float = 0.1,
                  progress=print, rounds: int = 5) -> LatencyModel:
    """Time every part of the latency model on `device` in its serving dtype (see module docstring).

    min_run_time: seconds of timing per sub-layer (in all its rounds); whole compact models get 10x
    that, the dense model 30x (3 s by default, as the compact stage times it). It prints how long the
    measurement took."""
    started = time.perf_counter()
    dtype = serving_defaults(device)[0]
    allocator = retain_freed_memory() if device.type == "cpu" else "caching allocator"
    shape = EncoderShape.of(hf_config)
    plan = "padded" if use_padded_plan(device) else "grouped"
    rows, columns = head_grid(shape.head_dim, plan)
    model = LatencyModel(
        key=model_key(shape, device, dtype, batch, seq_len, getattr(hf_config, "model_type", "bert")),
        fixed_ms=0.0, attention_empty_ms=0.0, attention_base_ms=0.0, head_widths=rows, vo_widths=columns,
        head_ms=[[0.0] * len(columns) for _ in rows],
        ffn_widths=ffn_grid(shape.intermediate_size), ffn_ms=[], plan=plan,
    )
    generator = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(batch, seq_len, shape.hidden_size, generator=generator, device="cpu").to(device, dtype)
    attention_mask = torch.ones(batch, seq_len, dtype=torch.long, device=device)

    def attention(qk, vo):
        return _sublayers(hf_config, shape, qk, vo, 0, hidden, attention_mask)[0]

    def ffn(width):
        return _sublayers(hf_config, shape, [], [], width, hidden, attention_mask)[1]

    configs = attention_configs(shape, plan)
    progress(f"latency model on {device_name(device)} ({dtype}, {allocator}), batch {batch} x {seq_len}, "
             f"{plan} plan: {len(configs)} attention sub-layers, {len(model.ffn_widths)} FFN widths, "
             f"{rounds} interleaved rounds")
    parts = {("attention", i): attention(qk, vo) for i, (qk, vo) in enumerate(configs)}
    parts["attention_empty"] = attention([], [])
    parts.update({("ffn", w): ffn(w) for w in model.ffn_widths})
    cpu = CpuShare()
    with cpu.counting():
        timed = interleaved_ms(parts, rounds, min_run_time, device)
    del parts
    attention_ms = [timed[("attention", i)] for i in range(len(configs))]
    fitted_group_ms = fit_attention(model, configs, attention_ms)
    residuals = sorted(abs(model.attention_cost(qk, vo) / ms - 1) for (qk, vo), ms in zip(configs, attention_ms))
    model.attention_empty_ms = timed["attention_empty"]
    model.ffn_ms = monotone([timed[("ffn", w)] for w in model.ffn_widths])
    progress(f"  ms per head in a group; VO widths {columns}:")
    for q, row in zip(rows, model.head_ms):
        progress(f"  {'uniform' if q == 0 else f'QK {q:3}':>7}: " + " ".join(f"{t:6.3f}" for t in row))
    progress(f"  per group {model.group_ms:.3f} ms (fitted {fitted_group_ms:+.3f}); per layer: with heads "
             f"{model.attention_base_ms:.3f}, with groups {model.grouped_ms:+.3f}, with uniform heads "
             f"{model.uniform_ms:+.3f}, no head {model.attention_empty_ms:.3f} ms; the formula vs the "
             f"{len(configs)} timed sub-layers: median |error| {statistics.median(residuals):.1%}, "
             f"largest {residuals[-1]:.1%}")
    progress("  FFN: " + ", ".join(f"{w}: {t:.2f}" for w, t in zip(model.ffn_widths, model.ffn_ms)) + " ms")

    empty = _timing_model(  # the fixed part: the family's compact model with every layer empty
        hf_config, shape, [[]] * shape.num_layers, [[]] * shape.num_layers, [0] * shape.num_layers,
        head="ForSequenceClassification", vocab_size=hf_config.vocab_size,
        max_position_embeddings=max(getattr(hf_config, "max_position_embeddings", 512), seq_len),
    )
    whole = {
        "empty": empty.to(device=device, dtype=dtype).eval(),
        "dense": dense_model(hf_config, device, dtype),
    }
    whole.update(calibration_models(hf_config, shape, device, dtype))
    layers_ms = {name: model.sublayers_ms(m.config.qk_dims, m.config.vo_dims, m.config.ffn_dims)
                 for name, m in whole.items() if name != "dense"}
    with cpu.counting():
        rounds_ms = interleaved_models_ms(whole, batch, seq_len, rounds, min_run_time * 10, {"dense": min_run_time * 30},
                                          statistic=list)
    timed = {name: statistics.median(values) for name, values in rounds_ms.items()}
    model.fixed_ms, model.layer_scale = fit_whole([layers_ms[n] for n in layers_ms], [timed[n] for n in layers_ms])
    model.dense_latency_ms = timed["dense"]
    # each whole compact model's miss, relative to the dense model's time (the denominator of predicted
    # speedups: a sub-millisecond model's own time is too noisy a yardstick)
    misses = {name: abs(model.fixed_ms + model.layer_scale * layers_ms[name] - timed[name]) / timed["dense"]
              for name in layers_ms}
    model.measurement = {
        "cpu_share": round(cpu.share, 3) if device.type == "cpu" else None,  # host time means nothing on a GPU
        "cpu_share_bound": SHARE_BOUND,
        "spread": max(spread(values) for values in rounds_ms.values()),
        "spread_bound": SPREAD_BOUND,
        "fit_error": max(misses.values()),
        "fit_bound": FIT_BOUND,
        "on": f"{platform.node()}, {device_name(device)}",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    progress(f"  fixed {model.fixed_ms:.2f} ms + {model.layer_scale:.3f} x the sub-layers (fitted to whole compact "
             f"models, measured / sub-layers ms: "
             + ", ".join(f"{name} {timed[name]:.2f} / {layers_ms[name]:.2f}" for name in layers_ms) + ")")
    progress(f"  dense model (measured) {model.dense_latency_ms:.1f} ms, its compact form (predicted) "
             f"{model.compact_dense_ms():.1f} ms; measured in {model.measurement['seconds']:.0f} s; "
             f"self-check: {measurement_summary(model)}")
    return model


def measurement_problems(model: LatencyModel) -> str | None:
    """What makes a measured model untrustworthy, in words (None: it passed its self-check): whole models'
    repeat rounds disagreeing beyond SPREAD_BOUND, or the parts missing whole models beyond FIT_BOUND
    (a busy machine: another process, a shared GPU, thermal throttling)."""
    m = model.measurement or {}
    problems = []
    if m.get("cpu_share") is not None and m["cpu_share"] < SHARE_BOUND:
        problems.append(f"it had {m['cpu_share']:.0%} of the CPU its threads asked for (bound {SHARE_BOUND:.0%})")
    if m.get("spread", 0.0) > SPREAD_BOUND:
        problems.append(f"whole models timed in repeat rounds differ by {m['spread']:.0%} (bound {SPREAD_BOUND:.0%})")
    if m.get("fit_error", 0.0) > FIT_BOUND:
        problems.append(f"its parts miss whole models by {m['fit_error']:.0%} of the dense model's time "
                        f"(bound {FIT_BOUND:.0%})")
    return " and ".join(problems) or None


def measurement_summary(model: LatencyModel) -> str:
    """The self-check's numbers in words, e.g. `CPU share 99%, repeat rounds within 12%, whole models
    predicted within 6%` (each with its bound)."""
    m = model.measurement or {}
    parts = [] if m.get("cpu_share") is None else [f"CPU share {m['cpu_share']:.0%} (bound {SHARE_BOUND:.0%})"]
    parts.append(f"repeat rounds within {m.get('spread', float('nan')):.0%} (bound {SPREAD_BOUND:.0%})")
    parts.append(f"whole models predicted within {m.get('fit_error', float('nan')):.0%} (bound {FIT_BOUND:.0%})")
    return ", ".join(parts)


def fit_whole(sublayers_ms: list[float], whole_ms: list[float]) -> tuple[float, float]:
    """(fixed, scale): the least-squares line whole = fixed + scale x sublayers through whole compact
    models' measured times (ms) against their sub-layers' (each timed alone), scale kept at >= 1 (a
    whole model does not run its layers faster than they run alone: a fit below 1, from noise, is
    replaced by scale 1 and the median difference as the fixed part)."""
    n = len(sublayers_ms)
    mean_x, mean_y = sum(sublayers_ms) / n, sum(whole_ms) / n
    var = sum((x - mean_x) ** 2 for x in sublayers_ms)
    scale = sum((x - mean_x) * (y - mean_y) for x, y in zip(sublayers_ms, whole_ms)) / var if var > 0 else 1.0
    if scale < 1.0:
        return statistics.median(y - x for x, y in zip(sublayers_ms, whole_ms)), 1.0
    return mean_y - scale * mean_x, scale


def calibration_models(hf_config, shape: EncoderShape, device, dtype, sparsities=(0.5, 0.8, 0.9, 0.95, 0.97)) -> dict:
    """Compact models cut from random GRAIN-like masks (`random_masks`, seeds apart from the check's),
    whose whole times against their sub-layers' fit the fixed part and the sub-layers' scale
    (`fit_whole`: whole models read every layer's weights afresh, which sub-layers timed alone do not)."""
    dense = dense_model(hf_config, torch.device("cpu"), torch.float32)
    models = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        for i, sparsity in enumerate(sparsities):
            compact = compact_from_masked(dense, random_masks(shape, sparsity, seed=1000 + i))[0]
            models[f"sparsity {sparsity:g}"] = compact.to(device=device, dtype=dtype).eval()
    return models


def interleaved_models_ms(models: dict, batch: int, seq_len: int, rounds: int, min_run_time: float,
                          min_run_times: dict | None = None, statistic=statistics.median) -> dict:
    """{name: `statistic` of the models' per-round medians (measure_latency)}, models alternating
    round by round (as `compare_models`, which keeps the median round); `min_run_time` seconds per
    model in all, or its entry in `min_run_times`."""
    rounds_ms = {name: [] for name in models}
    for _ in range(max(1, rounds)):
        for name, m in models.items():
            seconds = (min_run_times or {}).get(name, min_run_time) / max(1, rounds)
            rounds_ms[name].append(measure_latency(m, batch, seq_len, min_run_time=seconds)["median_ms"])
    return {name: statistic(values) for name, values in rounds_ms.items()}


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


def check_reachable(model: LatencyModel, speedup: float) -> None:
    """Refuse (GrainError) a speedup target no pruning reaches on this device and shape: above the
    model's `max_speedup`, pruning would run on to an empty model and still miss it."""
    ceiling = model.max_speedup()
    if speedup > ceiling:
        raise GrainError(
            f"speedup={speedup:g} is beyond what pruning reaches on {model.key['device']} at {model.key['batch']} x "
            f"{model.key['seq_len']}: the latency model predicts at most {ceiling:.1f}x, for one head (QK 1, VO 1) and "
            f"one FFN neuron per layer (embeddings, LayerNorms and the task head do not shrink); give speedup="
            f"{0.9 * ceiling:.1f} or less, or a sparsity"
        )


def model_cache_path(hf_config, device: torch.device, batch: int, seq_len: int, cache_dir: Path) -> Path:
    """Where the latency model of `hf_config` (an HF config object or config.json dict) at this device,
    its serving dtype and this shape is cached (`model_key`)."""
    model_type = hf_config.get("model_type", "bert") if isinstance(hf_config, dict) else getattr(hf_config, "model_type", "bert")
    key = model_key(EncoderShape.of(hf_config), device, serving_defaults(device)[0], batch, seq_len, model_type)
    return cache_path(cache_dir, key)


def cached_latency_model(hf_config, device: torch.device, batch: int, seq_len: int, cache_dir: Path) -> LatencyModel | None:
    """The cached latency model of `hf_config` (an HF config object or config.json dict) at this device and
    shape, or None where none is cached (nothing is measured)."""
    path = model_cache_path(hf_config, device, batch, seq_len, cache_dir)
    return LatencyModel.load(path) if path.exists() else None


def latency_model(hf_config, device: torch.device, batch: int, seq_len: int, cache_dir: Path,
                  min_run_time: float = 0.1, progress=print, rounds: int = 5) -> LatencyModel:
    """The cached model for this device, dtype, torch version, model family, shape, batch and
    length; measured once (the time it took is printed, docs/measurements.md). A measurement that fails
    its self-check (`measurement_problems`) is taken again; failing twice, it raises GrainError naming
    the spread and is not cached."""
    path = model_cache_path(hf_config, device, batch, seq_len, cache_dir)
    if path.exists():
        progress(f"latency model from {path}")
        return LatencyModel.load(path)
    model = measure_model(hf_config, device, batch, seq_len, min_run_time, progress, rounds)
    problems = measurement_problems(model)
    if problems:  # a busy spell: once more
        progress(f"latency model: {problems}; measuring again")
        model = measure_model(hf_config, device, batch, seq_len, min_run_time, progress, rounds)
        problems = measurement_problems(model)
    if problems:
        raise GrainError(
            f"the latency model measured on {device_name(device)} cannot be trusted: {problems}, twice; the machine is "
            f"busy (other processes, a shared device): measure it when it is idle (python -m grain.bench.latency_model "
            f"--remeasure) or prune to a sparsity instead of a speedup"
        )
    model.save(path)
    progress(f"latency model saved to {path}")
    return model


# --- checking ------------------------------------------------------------------------------------


def random_masks(shape: EncoderShape, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """Masks of GRAIN-like structure: heads of random QK/VO widths, whole heads gone, a random FFN width."""
    rng = random.Random(seed)
    density = 1.0 - sparsity
    masks = {kind: torch.zeros(shape.num_layers, n, device="cpu") for kind, n in shape.units_per_layer.items()}
    d, q = shape.head_dim, shape.qk_units_per_head
    for layer in range(shape.num_layers):
        for h in range(shape.num_heads):
            if rng.random() < min(1.0, 2 * density):
                masks["qk"][layer, h * q:h * q + rng.randint(0, max(1, int(2 * density * q)))] = 1
                masks["vo"][layer, h * d:h * d + rng.randint(1, max(1, int(2 * density * d)))] = 1
        masks["ffn"][layer, :rng.randint(0, max(1, int(2 * density * shape.intermediate_size)))] = 1
    return masks


def check_predictions(model: LatencyModel, hf_config, device, sparsities: list[float], min_run_time: float,
                      compact_dirs: list[str] = (), rounds: int = 5) -> list[dict]:
    """Predicted vs measured ms of the dense model, of compact models cut from random GRAIN-like masks
    (one per sparsity) and of saved compact models (`compact_dirs`), all timed in this process in
    alternating rounds (`min_run_time` seconds per model in all); measured: the median round (as the
    compact stage) and the least. Each row: name, predicted_ms, measured_ms, least_ms, error, and for
    compact models the predicted and measured speedups over the dense model."""
    dtype = serving_defaults(device)[0]
    if device.type == "cpu":
        retain_freed_memory()
    dense = dense_model(hf_config, "cpu", torch.float32)
    shape = EncoderShape.of(dense)
    models, predicted = {"dense": None}, {"dense": model.dense_ms()}
    for seed, sparsity in enumerate(sparsities):
        masks = random_masks(shape, sparsity, seed)
        name = f"random, sparsity {sparsity:g}"
        models[name] = compact_from_masked(dense, masks)[0].to(device=device, dtype=dtype).eval()
        predicted[name] = model.predict_masks(masks, shape)
    for path in compact_dirs:
        compact = AutoModelForSequenceClassification.from_pretrained(path).to(device=device, dtype=dtype).eval()
        config = compact.config
        models[str(path)] = compact
        predicted[str(path)] = model.predict(config.qk_dims, config.vo_dims, config.ffn_dims)
    models["dense"] = dense.to(device=device, dtype=dtype)
    rounds_ms = {name: [] for name in models}
    for _ in range(max(1, rounds)):
        for name, m in models.items():
            rounds_ms[name].append(measure_latency(m, model.key["batch"], model.key["seq_len"],
                                                   min_run_time=min_run_time / max(1, rounds))["median_ms"])
    dense_measured = statistics.median(rounds_ms["dense"])
    rows = []
    for name in models:
        measured = statistics.median(rounds_ms[name])
        row = {"name": name, "predicted_ms": predicted[name], "measured_ms": measured,
               "least_ms": min(rounds_ms[name]), "error": predicted[name] / measured - 1}
        if name != "dense":
            row.update(predicted_speedup=model.dense_ms() / predicted[name], measured_speedup=dense_measured / measured)
        rows.append(row)
    return rows


def format_check(rows: list[dict]) -> str:
    width = max(len(row["name"]) for row in rows)
    lines = [f"{'model':{width}} {'predicted ms':>12} {'measured ms':>11} {'(least)':>9} {'error':>7} "
             f"{'speedup: predicted':>18} {'measured':>8}"]
    for row in rows:
        speedups = (f"{row['predicted_speedup']:18.2f} {row['measured_speedup']:8.2f}" if "predicted_speedup" in row
                    else f"{'':18} {'':8}")
        lines.append(f"{row['name']:{width}} {row['predicted_ms']:12.2f} {row['measured_ms']:11.2f} "
                     f"{row['least_ms']:9.2f} {row['error']:+7.1%} {speedups}")
    errors = [abs(row["error"]) for row in rows]
    lines.append(f"largest |error| {max(errors):.1%}, median {statistics.median(errors):.1%} over {len(rows)} models")
    return "\n".join(lines)

"""Kernel plans of the compact attention: how one layer's heads of different QK/VO widths are laid out
for the matmuls of a device kind, and the fused, padded weights that layout reads.

Two plans, chosen by the device the forward runs on (`use_padded_plan`):
- CPU, `GroupedLayout`: heads of equal (QK, VO) widths share one explicit batched
  matmul-softmax-matmul, with no padding (only a QK width of 1 is padded to 2); heads without QK
  units attend uniformly and are computed apart (V of the mean hidden state). Explicit attention and
  no padding are what measured fastest with MKL for the narrow heads pruning leaves (the timings are
  in `python -m grain.bench --profile` and the project's notes).
- GPU, `PaddedLayout`: every kept head of a layer is padded with zero weights to one width, a
  multiple of 8, so that a single `scaled_dot_product_attention` call (flash / memory-efficient /
  cuDNN kernels, which want equal Q/K/V head widths in multiples of 8) serves the whole layer. On a
  GPU a model this small is bound by kernel launches and by kernels that reject odd widths, not by
  FLOPs; the padding is exact (zero Q/K columns add 0 to every score, zero V columns give zero
  contexts that meet zero output columns) and its FLOPs are counted apart (`padding_flops`).
  Uniform heads need no special case there: zero Q and K give all-zero scores, i.e. uniform
  attention over the kept keys, as in the masked model.

Nothing here syncs with the host in a forward pass (`KeyMask.of` checks the attention mask on the
host only in eager CPU runs, where that costs nothing), so `torch.compile` and CUDA graphs capture
the forward whole and `torch.export` keeps the attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def round_up(width: int, multiple: int = 8) -> int:
    """`width` rounded up to a multiple of `multiple`: matmul widths are padded to a multiple of 8, because
    MKL's CPU sgemm runs widths that are not markedly slower (docs/measurements.md) and GPU tensor cores
    and the fused attention kernels want them too."""
    return -(-width // multiple) * multiple


def zero_padded(tensor: torch.Tensor, extra: int, dim: int = 0) -> torch.Tensor:
    """`tensor` with `extra` zero slices appended along `dim` (zero rows or columns padding a weight), in its
    dtype and on its device."""
    shape = list(tensor.shape)
    shape[dim] = extra
    return torch.cat([tensor, tensor.new_zeros(shape)], dim)


def use_padded_plan(device: torch.device) -> bool:
    """The GPU plan (one padded attention call per layer) off the CPU; the grouped plan on CPU."""
    return device.type != "cpu"


def exporting() -> bool:
    """Whether torch.export (the ONNX exporter's) is tracing the forward."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return is_exporting is not None and is_exporting()


def _may_read_on_host(tensor: torch.Tensor) -> bool:
    """Whether reading `tensor` on the host is free and leaves no trace: an eager CPU run, not a
    compiled, traced or exported one (there a data-dependent branch syncs or bakes in one input)."""
    if tensor.device.type != "cpu" or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not exporting()


@dataclass(frozen=True)
class KeyMask:
    """The attention mask in the forms the compact attention uses, built once per forward.

    bias: [batch, 1, seq] in the hidden states' dtype, 0 for kept keys and the dtype's minimum for
    padding (None: every key is kept, known without a device sync); weights: [batch, seq] that average
    over kept keys (None: plain mean), for the CPU plan's uniform heads.
    """

    bias: torch.Tensor | None
    weights: torch.Tensor | None

    @classmethod
    def of(cls, attention_mask: torch.Tensor | None, dtype: torch.dtype) -> "KeyMask":
        if attention_mask is None or (_may_read_on_host(attention_mask) and bool(attention_mask.all())):
            return cls(None, None)
        kept = attention_mask.to(dtype)
        bias = (1.0 - kept)[:, None, :] * torch.finfo(dtype).min
        return cls(bias, kept / kept.sum(-1, keepdim=True).clamp_min(1))


# --- CPU: one batched attention per distinct head width --------------------------------------------


@dataclass(frozen=True)
class HeadGroup:
    """Heads that share one batched attention: each has `qk_slot` Q and K columns (a QK width of 1
    padded to 2) and `vo_slot` V columns."""

    heads: tuple[int, ...]
    qk_slot: int
    vo_slot: int

    @property
    def width(self) -> int:
        """Columns the group takes in the fused projection: [Q | K | V]."""
        return len(self.heads) * (2 * self.qk_slot + self.vo_slot)


def plan_head_groups(qk_dims: list[int], vo_dims: list[int], uniform_apart: bool = True) -> list[HeadGroup]:
    """Group the heads with both QK and VO units by their (QK, VO) widths, widest first: one batched
    attention per group, with no padding (padding heads to share fewer calls measured slower on CPU).
    Only a QK width of 1 is padded to 2: MKL's batched matmul runs width 1 slower than width 2
    (docs/measurements.md).
    Heads without VO units add nothing and are left out; heads without QK units attend uniformly and
    are handled apart (`GroupedLayout.uniform_vo`), unless `uniform_apart` is False (a sliding-window
    layer, where the keys a query attends depend on its position): then they join a group with a QK
    slot of 2 zero columns (all-zero scores: uniform attention over the keys the mask leaves)."""
    widths: dict[tuple[int, int], list[int]] = {}
    for h in range(len(vo_dims)):
        if vo_dims[h] > 0 and (qk_dims[h] > 0 or not uniform_apart):
            widths.setdefault((max(qk_dims[h], 2), vo_dims[h]), []).append(h)
    return [HeadGroup(tuple(heads), qk, vo) for (qk, vo), heads in sorted(widths.items(), reverse=True)]


def _starts(dims: list[int]) -> list[int]:
    return [sum(dims[:h]) for h in range(len(dims))]


@dataclass(frozen=True)
class GroupedLayout:
    """CPU plan: where the columns of the fused projection come from, and where the contexts go.

    The projection computes, group after group, [Q | K | V] of the group's heads (Q and K padded to
    the group's QK slot), then zero columns up to a multiple of 8 (`round_up`).
    `projection_rows[i]` is the row of [W_q; W_k; W_v; 0] that column i reads (the last, zero row for
    padding); `context_columns[j]` is the column of W_o (compact VO order) that context j multiplies.
    Uniform heads (VO units, no QK units) stay out of both: their context is the same at every
    position (`uniform_vo`: their VO columns). `padding_columns` counts the projection columns that
    read the zero row, `padded_qk` the QK columns heads gain from their group's slot.
    """

    groups: list[HeadGroup]
    projection_rows: list[int]
    context_columns: list[int]
    uniform_vo: list[int]
    padding_columns: int
    padded_qk: int

    @classmethod
    def plan(cls, qk_dims: list[int], vo_dims: list[int], uniform_apart: bool = True) -> "GroupedLayout":
        """uniform_apart: heads without QK units are computed apart (`uniform_vo`), as suits attention
        over every kept key; False for a sliding-window layer (see `plan_head_groups`)."""
        qk_total, vo_total = sum(qk_dims), sum(vo_dims)
        qk_start, vo_start = _starts(qk_dims), _starts(vo_dims)
        zero_row = 2 * qk_total + vo_total
        groups = plan_head_groups(qk_dims, vo_dims, uniform_apart)
        rows, context_columns = [], []
        for group in groups:
            for base in (0, qk_total):  # Q rows, then K rows
                for h in group.heads:
                    rows += [base + qk_start[h] + j if j < qk_dims[h] else zero_row for j in range(group.qk_slot)]
            values = [vo_start[h] + j for h in group.heads for j in range(vo_dims[h])]
            rows += [2 * qk_total + c for c in values]  # V rows
            context_columns += values
        rows += [zero_row] * (round_up(len(rows)) - len(rows))
        uniform_vo = [vo_start[h] + j for h in range(len(vo_dims)) if qk_dims[h] == 0 and uniform_apart
                      for j in range(vo_dims[h])]
        padded_qk = sum(group.qk_slot - qk_dims[h] for group in groups for h in group.heads)
        return cls(groups, rows, context_columns, uniform_vo, rows.count(zero_row), padded_qk)

    def padding_flops(self, hidden_size: int, batch: int, seq_len: int) -> int:
        """FLOPs (multiply-add = 2) this plan spends on padding in one forward of [batch, seq_len]."""
        tokens = batch * seq_len
        return 2 * tokens * hidden_size * self.padding_columns + 2 * batch * seq_len * seq_len * self.padded_qk


def _heads_first(projected: torch.Tensor, start: int, heads: int, slot: int) -> torch.Tensor:
    """Columns [start, start + heads * slot) of [batch, seq, *] as [batch * heads, seq, slot]
    (a view for a single head: batched matmuls read the strided columns in place)."""
    batch, seq, _ = projected.shape
    block = projected[:, :, start:start + heads * slot]
    if heads == 1:
        return block
    return block.view(batch, seq, heads, slot).transpose(1, 2).reshape(batch * heads, seq, slot)


def grouped_contexts(
    projected: torch.Tensor, layout: GroupedLayout, bias: torch.Tensor | None, dropout_p: float, training: bool,
) -> torch.Tensor:
    """The CPU plan's attention: [batch, kept VO (context_columns order), seq] contexts, transposed,
    from the fused projection [batch, seq, padded width] (the attention scale is already in Q).

    Each group runs softmax(Q K^T + bias) then the context as V^T P^T: MKL runs that product 3-5x
    faster than P V when V is narrow, and a group's transposed contexts stack into the output
    projection's input without a copy.
    """
    batch, seq, _ = projected.shape
    contexts, offset = [], 0
    for group in layout.groups:
        n, qk, vo = len(group.heads), group.qk_slot, group.vo_slot
        query = _heads_first(projected, offset, n, qk)
        key = _heads_first(projected, offset + n * qk, n, qk)
        value = _heads_first(projected, offset + 2 * n * qk, n, vo)
        keys_t = key.transpose(1, 2)
        if bias is None:
            scores = torch.bmm(query, keys_t)
        else:
            scores = torch.baddbmm(bias if n == 1 else bias.repeat_interleave(n, 0), query, keys_t)
        probs = F.dropout(torch.softmax(scores, -1), dropout_p, training)
        contexts.append(torch.bmm(value.transpose(1, 2), probs.transpose(1, 2)).reshape(batch, n * vo, seq))
        offset += group.width
    return contexts[0] if len(contexts) == 1 else torch.cat(contexts, dim=1)


def exported_contexts(
    projected: torch.Tensor, layout: GroupedLayout, bias: torch.Tensor | None, dropout_p: float, training: bool,
) -> torch.Tensor:
    """The CPU plan's attention as an exported graph (ONNX) runs it: [batch, seq, kept VO]
    (`context_columns` order) from the fused projection [batch, seq, padded width], the same groups and
    products as `grouped_contexts` but laid out for onnxruntime rather than MKL's eager calls: one
    `Split` of the projection per layer (not three `Slice` copies per group), heads as a 4-D batch
    dimension with the padding mask broadcast over them (no `Expand` of the mask per group), and P V
    contexts in [batch, seq, VO] order, so that the output projection that follows is a plain matrix
    product with a constant weight, which int8 quantization reaches (`grain.deploy.quantize`). On the
    quickstart's compact model this took onnxruntime's fp32 forward from 79.8 to 72.8 ms and its int8
    forward from 51.1 to 46.0 ms at 32 x 128 (docs/measurements.md)."""
    batch, seq, width = projected.shape
    sizes = [size for g in layout.groups for size in (len(g.heads) * g.qk_slot,) * 2 + (len(g.heads) * g.vo_slot,)]
    parts = torch.split(projected, sizes + ([width - sum(sizes)] if width > sum(sizes) else []), dim=-1)
    mask = None if bias is None else bias[:, None]  # [batch, 1, 1, seq]: every head of a group
    contexts = []
    for i, group in enumerate(layout.groups):
        n, qk, vo = len(group.heads), group.qk_slot, group.vo_slot
        query = parts[3 * i].view(batch, seq, n, qk).transpose(1, 2)
        keys_t = parts[3 * i + 1].view(batch, seq, n, qk).permute(0, 2, 3, 1)
        value = parts[3 * i + 2].view(batch, seq, n, vo).transpose(1, 2)
        scores = torch.matmul(query, keys_t)
        if mask is not None:
            scores = scores + mask
        probs = F.dropout(torch.softmax(scores, -1), dropout_p, training)
        contexts.append(torch.matmul(probs, value).transpose(1, 2).reshape(batch, seq, n * vo))
    return contexts[0] if len(contexts) == 1 else torch.cat(contexts, dim=-1)


# --- GPU: every head padded to one width, one fused attention call ---------------------------------


@dataclass(frozen=True)
class PaddedBucket:
    """Heads that share one `scaled_dot_product_attention` call, Q, K and V each `width` wide."""

    heads: tuple[int, ...]
    width: int


@dataclass(frozen=True)
class PaddedLayout:
    """GPU plan: the fused projection computes, bucket after bucket, [Q | K | V] of the bucket's heads,
    each head's Q, K and V padded with zero rows to the bucket's width (a multiple of 8).

    `projection_rows[i]`: the row of [W_q; W_k; W_v; 0] that projection column i reads;
    `output_columns[j]`: the column of [W_o | 0] that context column j multiplies (padding contexts
    meet the zero column). `padded_qk` / `padded_vo`: Q/K and V columns added by padding, summed over
    heads (for `padding_flops`).
    """

    buckets: list[PaddedBucket]
    projection_rows: list[int]
    output_columns: list[int]
    padded_qk: int
    padded_vo: int

    @classmethod
    def plan(cls, qk_dims: list[int], vo_dims: list[int], multiple: int = 8, max_waste: float = 2.0) -> "PaddedLayout":
        """One call per layer, all heads padded to the widest (rounded to `multiple`), unless that more
        than `max_waste`-folds the attention FLOPs of one call per distinct rounded width; then one
        call per rounded width (a launch costs less than doubling the attention work)."""
        qk_total, vo_total = sum(qk_dims), sum(vo_dims)
        qk_start, vo_start = _starts(qk_dims), _starts(vo_dims)
        heads = [h for h in range(len(vo_dims)) if vo_dims[h] > 0]
        widths = {h: round_up(max(qk_dims[h], vo_dims[h], 1), multiple) for h in heads}
        by_width: dict[int, list[int]] = {}
        for h in heads:
            by_width.setdefault(widths[h], []).append(h)
        buckets = [PaddedBucket(tuple(hs), w) for w, hs in sorted(by_width.items(), reverse=True)]
        if heads and len(heads) * max(widths.values()) <= max_waste * sum(widths.values()):
            buckets = [PaddedBucket(tuple(heads), max(widths.values()))]
        zero_row, zero_column = 2 * qk_total + vo_total, vo_total
        rows, columns = [], []
        for bucket in buckets:
            w = bucket.width
            for base in (0, qk_total):  # Q rows, then K rows
                for h in bucket.heads:
                    rows += [base + qk_start[h] + j if j < qk_dims[h] else zero_row for j in range(w)]
            for h in bucket.heads:
                values = [vo_start[h] + j if j < vo_dims[h] else zero_column for j in range(w)]
                rows += [2 * qk_total + c for c in values]  # the zero column's row is the zero row
                columns += values
        padded_qk = sum(b.width - qk_dims[h] for b in buckets for h in b.heads)
        padded_vo = sum(b.width - vo_dims[h] for b in buckets for h in b.heads)
        return cls(buckets, rows, columns, padded_qk, padded_vo)

    def padding_flops(self, hidden_size: int, batch: int, seq_len: int) -> int:
        """FLOPs (multiply-add = 2) this plan spends on padding in one forward of [batch, seq_len]:
        projection rows, Q K^T and P V columns, output projection columns."""
        tokens = batch * seq_len
        projection = 2 * tokens * hidden_size * (2 * self.padded_qk + self.padded_vo)
        attention = 2 * batch * seq_len * seq_len * (self.padded_qk + self.padded_vo)
        output = 2 * tokens * hidden_size * self.padded_vo
        return projection + attention + output


def padded_contexts(
    projected: torch.Tensor, layout: PaddedLayout, bias: torch.Tensor | None, dropout_p: float,
) -> torch.Tensor:
    """The GPU plan's attention: [batch, seq, padded contexts] (`output_columns` order) from the fused
    projection [batch, seq, 3 * padded heads width], one fused attention call per bucket."""
    batch, seq, _ = projected.shape
    mask = None if bias is None else bias[:, None]  # [batch, 1, 1, seq]
    contexts, offset = [], 0
    for bucket in layout.buckets:
        n, w = len(bucket.heads), bucket.width
        qkv = projected[:, :, offset:offset + 3 * n * w].view(batch, seq, 3, n, w).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask, dropout_p=dropout_p, scale=1.0)
        contexts.append(context.transpose(1, 2).reshape(batch, seq, n * w))
        offset += 3 * n * w
    return contexts[0] if len(contexts) == 1 else torch.cat(contexts, dim=-1)


# --- weights derived from parameters ---------------------------------------------------------------


class DerivedWeights:
    """Tensors computed from parameters (fused, padded, reordered weights), kept between forwards.

    Rebuilt whenever one of the parameters they come from changes (data pointer, version counter,
    device, dtype), and never kept where autograd must see the parameters (grad enabled: training)
    or under torch.compile / export (there the graph computes them, and freezing may fold them).
    """

    def __init__(self):
        self._entries: dict[str, tuple[tuple, tuple[torch.Tensor, ...]]] = {}

    def get(self, name: str, sources: list[torch.Tensor], build: Callable[[], tuple[torch.Tensor, ...]]):
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return build()
        try:
            stamp = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in sources)
        except RuntimeError:  # inference tensors keep no version counter: nothing to check against
            return build()
        entry = self._entries.get(name)
        if entry is None or entry[0] != stamp:
            entry = (stamp, build())
            self._entries[name] = entry
        return entry[1]

    def clear(self) -> None:
        self._entries.clear()

    # Copies and pickles (deepcopy, ddp_spawn) start empty: the copy's parameters are new tensors.
    def __deepcopy__(self, memo) -> "DerivedWeights":
        return DerivedWeights()

    def __getstate__(self) -> dict:
        return {"_entries": {}}

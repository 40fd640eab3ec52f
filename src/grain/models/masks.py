"""Unit masks on a transformer encoder, applied with forward hooks (no change to the model's code).

Per layer l, three mask vectors multiply unit outputs:
- qk  [hidden / qk_unit_width]: the query projection's output (a QK unit's score contribution q_j * k_j
  becomes 0, exactly as if row j of W_Q and W_K were removed). Under rotary position embeddings (RoPE,
  ModernBERT) dimension i of a head is rotated with i + head_dim/2 under one frequency, so a QK unit
  is that pair and its mask value multiplies both dimensions (`expand_qk_mask`); where Q, K and V are
  one fused Linear, only its Q columns are masked;
- vo  [hidden]: the context vector, i.e. the input of the attention output projection W_O;
- ffn [intermediate]: the FFN activation, i.e. the input of W_2.
A mask of 0 therefore gives exactly the outputs of a model whose masked rows/columns are zero.
Which modules these are is the model family's `grain.architectures.Architecture`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from grain.architectures import architecture_of


@dataclass(frozen=True)
class EncoderShape:
    """The sizes of an encoder's prunable units.

    qk_unit_width: dimensions of Q (and of K) one QK unit holds, 1, or 2 under RoPE (a rotary pair);
    gated_ffn: W_1 holds an input and a gate row per FFN unit (GeGLU); bias: the Linears have biases.
    """

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    qk_unit_width: int = 1
    gated_ffn: bool = False
    bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def qk_units_per_head(self) -> int:
        """QK units of one head: head_dim, or head_dim / 2 rotary pairs."""
        return self.head_dim // self.qk_unit_width

    @property
    def units_per_layer(self) -> dict[str, int]:
        """Number of pruning units of each kind in one layer."""
        return {"qk": self.num_heads * self.qk_units_per_head, "vo": self.hidden_size, "ffn": self.intermediate_size}

    @classmethod
    def of(cls, model_or_config) -> "EncoderShape":
        """The shape of a model's encoder, or of an HF config (object or dict)."""
        config = getattr(model_or_config, "config", model_or_config)
        arch = architecture_of(config)
        sizes = (int(arch.config_value(config, name)) for name in (
            "num_layers", "hidden_size", "num_heads", "intermediate_size",
        ))
        return cls(*sizes, qk_unit_width=2 if arch.rotary else 1, gated_ffn=arch.gated_ffn, bias=arch.has_bias(config))


def expand_qk_mask(mask: torch.Tensor, shape: EncoderShape) -> torch.Tensor:
    """A layer's QK mask [qk units] as a mask of Q's dimensions [hidden]: under RoPE pair p of a head
    masks its dimensions p and p + head_dim/2 (the head's [first halves | second halves], as
    rotate_half splits it); otherwise the mask itself. Differentiable (the pair's gradient is the sum of
    its two dimensions')."""
    if shape.qk_unit_width == 1:
        return mask
    return mask.view(shape.num_heads, 1, shape.qk_units_per_head).expand(-1, 2, -1).reshape(shape.hidden_size)


def qk_dimensions(units: torch.Tensor, shape: EncoderShape) -> torch.Tensor:
    """Q rows (within one layer's [hidden] Q) of QK units `units` (long, in unit numbering): per head, the
    first dimensions of its kept pairs, then their partners (+ head_dim/2), so that the compact head's
    rotate_half pairs the same dimensions; the units themselves without RoPE."""
    if shape.qk_unit_width == 1:
        return units
    per_head, d = shape.qk_units_per_head, shape.head_dim
    head, pair = units // per_head, units % per_head
    rows = []
    for h in head.unique(sorted=True).tolist():  # (compaction reads the kept units on the host anyway)
        first = h * d + pair[head == h]
        rows += [first, first + d // 2]
    return torch.cat(rows) if rows else units


@dataclass(frozen=True)
class KeptStructure:
    """What unit masks keep, the one schema of a pruned structure: per layer, the QK and the VO units
    kept by each head (all heads, 0 where a head keeps none) and the FFN neurons kept.

    The compact config's per-layer widths (`compact_dims`: heads without VO units are gone), summary.json's
    `layers` (`as_layers`) and the latency model's predictions read it.
    """

    qk: list[list[int]]   # [layers][heads]: Q (and K) dimensions, i.e. QK units x qk_unit_width
    vo: list[list[int]]   # [layers][heads]
    ffn: list[int]        # [layers]

    @classmethod
    def of(cls, masks: dict[str, torch.Tensor], shape: EncoderShape) -> "KeptStructure":
        """From masks {"qk": [layers, qk units], "vo": [layers, hidden], "ffn": [layers, intermediate]} on
        any device (read back to the host once: for planning and reporting, not for a training step's hot
        path)."""
        qk = (masks["qk"].detach() > 0).view(shape.num_layers, shape.num_heads, -1).sum(-1).cpu() * shape.qk_unit_width
        vo = (masks["vo"].detach() > 0).view(shape.num_layers, shape.num_heads, shape.head_dim).sum(-1).cpu()
        ffn = (masks["ffn"].detach() > 0).sum(-1).cpu()
        return cls(qk.tolist(), vo.tolist(), ffn.tolist())

    @property
    def heads_kept(self) -> int:
        """Heads that keep at least one VO unit (a head without one adds nothing)."""
        return sum(v > 0 for layer in self.vo for v in layer)

    def compact_dims(self) -> tuple[list[list[int]], list[list[int]], list[int]]:
        """(qk_dims, vo_dims, ffn_dims) as a compact config holds them: per layer the QK and VO widths of
        the heads that keep VO units, and the FFN width."""
        kept = [[h for h, v in enumerate(layer) if v > 0] for layer in self.vo]
        qk_dims = [[self.qk[i][h] for h in heads] for i, heads in enumerate(kept)]
        vo_dims = [[self.vo[i][h] for h in heads] for i, heads in enumerate(kept)]
        return qk_dims, vo_dims, list(self.ffn)

    def as_layers(self) -> list[dict]:
        """summary.json's `layers`: per layer {"qk_per_head": [..], "vo_per_head": [..], "ffn": n}."""
        return [{"qk_per_head": q, "vo_per_head": v, "ffn": f} for q, v, f in zip(self.qk, self.vo, self.ffn)]


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    return architecture_of(model).layers(model)


# (layer index, unit kind) -> mask tensor for that layer, or None to leave the layer unmasked.
MaskSource = Callable[[int, str], "torch.Tensor | None"]


def attach_mask_hooks(model: nn.Module, mask_for: MaskSource) -> list:
    """Register hooks that multiply each layer's units by `mask_for(layer, kind)`; returns the handles."""
    arch = architecture_of(model)
    arch.check(model.config)
    shape = EncoderShape.of(model)
    handles = []
    for index in range(len(arch.layers(model))):
        query_mask = MaskOutput(mask_for, index, "qk")
        if arch.rotary or arch.fused_qkv:
            query_mask = MaskQueryOutput(mask_for, index, "qk", shape, fused=arch.fused_qkv)
        handles.append(arch.module(model, index, "query").register_forward_hook(query_mask))
        handles.append(arch.module(model, index, "attention_output").register_forward_pre_hook(MaskInput(mask_for, index, "vo")))
        handles.append(arch.module(model, index, "ffn_out").register_forward_pre_hook(MaskInput(mask_for, index, "ffn")))
    return handles


class MaskedProduct(torch.autograd.Function):
    """x * mask whose mask gradient is reduced in float32 whatever x's dtype.

    Under bf16/fp16 autocast the activations are half precision; autograd's own product would sum
    dL/dm over all tokens in that precision (bf16 keeps 8 bits of mantissa), and the
    importance EMA folds these sums. Here the forward stays in x's dtype and x is saved as it is (no float32
    copy kept for the backward); only the backward's per-unit reduction runs in float32.
    x: [..., units] (half precision); mask: [units] (float32).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, mask)
        return x * mask.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, mask = ctx.saved_tensors
        grad_x = grad * mask.to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_mask = None
        if ctx.needs_input_grad[1]:
            units = mask.shape[-1]
            grad_mask = (grad.reshape(-1, units).float() * x.reshape(-1, units).float()).sum(0).to(mask.dtype)
        return grad_x, grad_mask


def apply_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [..., units] times mask [units], in x's dtype; a mask that takes gradients gets them
    reduced in float32 (`MaskedProduct`), a mask that does not costs one plain product."""
    if mask.requires_grad and x.dtype != mask.dtype:
        return MaskedProduct.apply(x, mask)
    return x * mask.to(x.dtype)


class MaskOutput:
    """Forward hook multiplying a module's output by a mask (a class, not a closure: picklable for ddp_spawn)."""

    def __init__(self, mask_for: MaskSource, index: int, kind: str):
        self.mask_for, self.index, self.kind = mask_for, index, kind

    def __call__(self, module, args, output):
        mask = self.mask_for(self.index, self.kind)
        return output if mask is None else apply_mask(output, mask)


class MaskQueryOutput(MaskOutput):
    """Forward hook on the query projection of a rotary and/or fused-QKV family: the QK mask expanded
    to Q's dimensions (`expand_qk_mask`), and where the Linear is the fused [Q | K | V] one, padded with
    ones over its K and V columns."""

    def __init__(self, mask_for: MaskSource, index: int, kind: str, shape: EncoderShape, fused: bool):
        super().__init__(mask_for, index, kind)
        self.shape, self.fused = shape, fused

    def __call__(self, module, args, output):
        mask = self.mask_for(self.index, self.kind)
        if mask is None:
            return output
        mask = expand_qk_mask(mask, self.shape)
        if self.fused:
            mask = torch.cat([mask, mask.new_ones(output.shape[-1] - mask.shape[-1])])
        return apply_mask(output, mask)


class MaskInput(MaskOutput):
    """Forward pre-hook multiplying a module's input by a mask."""

    def __call__(self, module, args):
        mask = self.mask_for(self.index, self.kind)
        return args if mask is None else (apply_mask(args[0], mask), *args[1:])


def unit_weights(model: nn.Module, index: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """Weight slices of each unit kind of layer `index`, each laid out [units, fan] (for magnitude scores):
    a rotary pair's two Q (K) rows side by side, a gated FFN unit's input and gate rows side by side."""
    arch = architecture_of(model)
    shape = EncoderShape.of(model)
    h = shape.hidden_size

    def weight(role: str) -> torch.Tensor:
        return arch.module(model, index, role).weight

    query, key, value = weight("query"), weight("key"), weight("value")
    if arch.fused_qkv:  # one [3 hidden, hidden] weight
        query, key, value = query[:h], key[h:2 * h], value[2 * h:]
    if arch.rotary:  # [heads, 2, pairs, fan] -> [heads * pairs, 2 fan]
        def pairs(w: torch.Tensor) -> torch.Tensor:
            per_head = w.view(shape.num_heads, 2, shape.qk_units_per_head, -1)
            return per_head.transpose(1, 2).reshape(shape.units_per_layer["qk"], -1)
        query, key = pairs(query), pairs(key)
    ffn_in = weight("ffn_in")
    if arch.gated_ffn:  # [2 intermediate, hidden] -> [intermediate, 2 hidden]
        ffn_in = ffn_in.view(2, shape.intermediate_size, -1).transpose(0, 1).reshape(shape.intermediate_size, -1)
    return {
        "qk": (query, key),
        "vo": (value, weight("attention_output").t()),
        "ffn": (ffn_in, weight("ffn_out").t()),
    }

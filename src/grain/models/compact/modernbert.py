"""Compact ModernBERT (Ettin, mmBERT, gte-modernbert): pre-norm layers with rotary heads of different
widths and gated FFNs of any width.

The embeddings (ModernBertEmbeddings), the rotary tables (ModernBertRotaryEmbedding, one per layer
type with its own theta) and the heads' ModernBertPredictionHead are transformers'; each layer is
`attn_norm` -> `GrainRotaryAttention` -> residual, `mlp_norm` -> `GrainGatedMLP` -> residual, then
the final norm, as ModernBertEncoderLayer and ModernBertModel.

Rotary pairs: a compact head that keeps n of the original head's pairs holds Q (and K) rows
[p_1 .. p_n, p_1 + d/2 .. p_n + d/2] (d: the original head dim), so that rotate_half pairs the same
dimensions as in the original head; `config.rotary_pairs[layer][head]` lists the p_i, the frequency
each pair keeps. The attention rotates the fused [Q | K | V] projection in place of the kernel plans'
column order (`RotaryColumns`: each column's frequency, the column it is paired with, and the sign
rotate_half gives it; V and padding columns pass unrotated), so both kernel plans of `.kernels` run
it unchanged. The scale stays 1/sqrt(d).

Sliding-window layers attend to keys within `config.sliding_window` (local_attention / 2) positions of
the query, as transformers' `sliding_window_bidirectional_overlay`: an additive band mask on top of the
padding mask; heads without QK units there attend uniformly over the window (`uniform_apart` False).

Padded attention only: the unpadded path of ModernBERT's flash-attention (`cu_seqlens`, varlen
kernels) would need varlen calls per head-width group (flash-attn's `flash_attn_varlen_func` takes
one head width per call, a multiple of 8), i.e. the padded plan's buckets over unpadded tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ModernBertConfig
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput, TokenClassifierOutput
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.modernbert.modeling_modernbert import (
    ModernBertEmbeddings,
    ModernBertPredictionHead,
    ModernBertRotaryEmbedding,
)

from .bert import (
    Classifier,
    CompactFamily,
    CompactStructure,
    GrainBertForQuestionAnswering,
    GrainBertForTokenClassification,
    GrainBertPreTrainedModel,
    GrainSelfAttention,
    TokenHead,
    classification_loss,
    factorize_word_embeddings,
)
from .kernels import DerivedWeights, KeyMask, round_up, zero_padded

SLIDING = "sliding_attention"


class GrainModernBertConfig(CompactStructure, ModernBertConfig):
    """ModernBertConfig plus the kept structure (`CompactStructure`) and `rotary_pairs`: per layer, per
    kept head, the indices (0 .. d/2 - 1) of the rotary pairs it keeps, in its Q/K row order."""

    model_type = "grain_modernbert"

    def __init__(self, rotary_pairs=None, **kwargs):
        CompactStructure.__init__(self, **kwargs)
        if rotary_pairs is None:  # every pair of every head
            rotary_pairs = [[list(range(self.original_head_dim // 2))] * len(vo) for vo in self.vo_dims]
        self.rotary_pairs = rotary_pairs


@dataclass(frozen=True)
class RotaryColumns:
    """How RoPE acts on the columns of a fused projection laid out by a kernel plan.

    frequency[c]: the rotary frequency (0 .. d/2 - 1) of column c, or d/2 for a column that is not
    rotated (V, padding); partner[c]: the column rotate_half pairs c with (c itself where none);
    sign[c]: -1 for a pair's first dimension (rotate_half gives -x2 there), +1 for its second, 0 where
    none. Then rotated = x * cos[frequency] + x[partner] * sign * sin[frequency].
    """

    frequency: list[int]
    partner: list[int]
    sign: list[float]

    @classmethod
    def plan(cls, projection_rows: list[int], qk_dims: list[int], pairs: list[list[int]], half: int) -> "RotaryColumns":
        """projection_rows: the kernel plan's row of [W_q; W_k; W_v; 0] per column; qk_dims: the heads'
        QK widths (2 x their pairs); pairs: the heads' kept pairs; half: d/2 of the original heads."""
        qk_total = sum(qk_dims)
        rotated: dict[int, tuple[int, int, float]] = {}  # row -> (frequency, partner row, sign)
        start = 0
        for h, width in enumerate(qk_dims):
            n = width // 2
            for t in range(width):
                first = t < n
                partner = start + (t + n if first else t - n)
                for base in (0, qk_total):  # Q rows, then K rows
                    rotated[base + start + t] = (pairs[h][t % n], base + partner, -1.0 if first else 1.0)
            start += width
        column = {}
        for c, row in enumerate(projection_rows):
            column.setdefault(row, c)
        frequency, partner, sign = [], [], []
        for c, row in enumerate(projection_rows):
            f, p, s = rotated.get(row, (half, None, 0.0))
            frequency.append(f)
            partner.append(c if p is None else column[p])
            sign.append(s)
        return cls(frequency, partner, sign)


def rotate(projected: torch.Tensor, columns: dict[str, torch.Tensor], cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the Q and K columns of a fused projection [batch, seq, columns]: cos, sin [1 or batch,
    seq, d] as ModernBertRotaryEmbedding gives them (each frequency twice); columns: `RotaryColumns` as
    long / float tensors on the projection's device. Computed in float32, as transformers'
    `apply_rotary_pos_emb`, and returned in the projection's dtype."""
    half = cos.shape[-1] // 2
    cos = torch.cat([cos[..., :half].float(), cos.new_ones(*cos.shape[:-1], 1, dtype=torch.float32)], -1)
    sin = torch.cat([sin[..., :half].float(), sin.new_zeros(*sin.shape[:-1], 1, dtype=torch.float32)], -1)
    cos = cos.index_select(-1, columns["frequency"])
    sin = sin.index_select(-1, columns["frequency"]) * columns["sign"]
    x = projected.float()
    return (x * cos + x.index_select(-1, columns["partner"]) * sin).to(projected.dtype)


class GrainRotaryAttention(GrainSelfAttention):
    """ModernBERT's attention over the kept heads: the kept rows of Wqkv's Q, K and V (as `query`,
    `key`, `value`), rotated (`rotate`) for the heads' kept frequencies, then `Wo` over the kept VO
    units and its dropout."""

    def __init__(self, config: GrainModernBertConfig, index: int):
        self.uniform_apart = config.layer_types[index] != SLIDING
        super().__init__(config, index)
        self.Wo = nn.Linear(sum(self.vo_dims), config.hidden_size, bias=config.attention_bias)
        self.out_drop = nn.Dropout(config.attention_dropout)
        self.pairs = config.rotary_pairs[index]
        self.half = config.original_head_dim // 2

    def _rotary_columns(self, layout, device) -> dict[str, torch.Tensor]:
        name = type(layout).__name__
        if (f"{name}.frequency", device) not in self._indices:
            plan = RotaryColumns.plan(layout.projection_rows, self.qk_dims, self.pairs, self.half)
            self._index(plan.frequency, f"{name}.frequency", device)
            self._index(plan.partner, f"{name}.partner", device)
            self._indices[(f"{name}.sign", device)] = torch.tensor(plan.sign, dtype=torch.float32, device=device)
        return {kind: self._indices[(f"{name}.{kind}", device)] for kind in ("frequency", "partner", "sign")}

    def position(self, projected: torch.Tensor, layout, positions) -> torch.Tensor:
        cos, sin = positions
        return rotate(projected, self._rotary_columns(layout, projected.device), cos, sin)

    def forward(self, hidden: torch.Tensor, keys: KeyMask, positions) -> torch.Tensor:
        """[batch, seq, hidden] (after attn_norm) -> the attention's update [batch, seq, hidden]."""
        update = super().forward(hidden, keys, self.Wo, positions)
        if isinstance(keys, WindowMask):  # queries without a key in their window: a zero context
            update = torch.where(keys.has_keys, update, self.Wo.bias if self.Wo.bias is not None else update.new_zeros(()))
        return self.out_drop(update)


class OutputBias(nn.Module):
    """An emptied sub-layer: it adds its output Linear's bias (`bias`, where the Linears have biases)."""

    def __init__(self, config: GrainModernBertConfig, has_bias: bool, dropout: float):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(config.hidden_size)) if has_bias else None
        self.drop = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, *args) -> torch.Tensor:
        return torch.zeros_like(hidden) if self.bias is None else self.drop(torch.zeros_like(hidden) + self.bias)


class GrainGatedMLP(nn.Module):
    """ModernBERT's GeGLU FFN over `width` kept units: Wi [2 width, hidden] holds their input rows then
    their gate rows; Wo(drop(act(input) * gate)). It runs at round_up(width) units, zero rows and columns
    padding it (act(0) * 0 = 0 meets zero Wo columns: exact), as the other families' compact FFN."""

    def __init__(self, config: GrainModernBertConfig, width: int):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * width, bias=config.mlp_bias)
        self.act = ACT2FN[config.hidden_activation]
        self.drop = nn.Dropout(config.mlp_dropout)
        self.Wo = nn.Linear(width, config.hidden_size, bias=config.mlp_bias)
        self.width, self.padded_width = width, round_up(width)
        self._derived = DerivedWeights()

    def _padded(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Wi's weight [2 padded, hidden] and bias ([input | 0 | gate | 0] rows), Wo's weight [hidden, padded]."""
        wi, bias, wo = self.Wi.weight, self.Wi.bias, self.Wo.weight
        extra = self.padded_width - self.width
        if not extra:
            return wi, bias, wo

        def padded_halves(tensor: torch.Tensor) -> torch.Tensor:  # [input | 0 | gate | 0]
            return torch.cat([zero_padded(half, extra) for half in tensor.chunk(2)])

        def build():
            padded_bias = None if bias is None else padded_halves(bias)
            return padded_halves(wi), padded_bias, zero_padded(wo, extra, dim=1)

        return self._derived.get("padded", [t for t in (wi, bias, wo) if t is not None], build)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        wi, bias, wo = self._padded()
        value, gate = F.linear(hidden, wi, bias).chunk(2, dim=-1)
        return F.linear(self.drop(self.act(value) * gate), wo, self.Wo.bias)


class GrainModernBertLayer(nn.Module):
    """Layer `index`: x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)); layer 0's attn_norm is an
    identity (the embeddings end in a norm)."""

    def __init__(self, config: GrainModernBertConfig, index: int):
        super().__init__()
        norm = dict(eps=config.norm_eps, bias=config.norm_bias)
        self.attention_type = config.layer_types[index]
        self.attn_norm = nn.Identity() if index == 0 else nn.LayerNorm(config.hidden_size, **norm)
        if config.vo_dims[index]:
            self.attn = GrainRotaryAttention(config, index)
        else:
            self.attn = OutputBias(config, config.attention_bias, config.attention_dropout)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, **norm)
        width = config.ffn_dims[index]
        self.mlp = GrainGatedMLP(config, width) if width else OutputBias(config, config.mlp_bias, config.mlp_dropout)

    def forward(self, hidden: torch.Tensor, keys: KeyMask, positions) -> torch.Tensor:
        hidden = hidden + self.attn(self.attn_norm(hidden), keys, positions)
        return hidden + self.mlp(self.mlp_norm(hidden))


@dataclass(frozen=True)
class WindowMask(KeyMask):
    """A sliding-window layer's mask: `bias` [batch, seq, seq] (query x key), and `has_keys` [batch,
    seq, 1]: whether the query's window holds a kept key. One that holds none (a padding position far
    from the text) gets a zero context, as PyTorch's scaled_dot_product_attention gives a fully masked
    row (transformers' default attention for ModernBERT), so that even padding positions equal the masked
    model's."""

    has_keys: torch.Tensor | None = None


def sliding_keys(keys: KeyMask, batch: int, seq: int, window: int, dtype, device) -> KeyMask:
    """The mask of a sliding-window layer (`WindowMask`): `keys`' padding bias with the keys farther than
    `window` positions from the query hidden too; `keys` itself where every key is within the window
    (seq <= window + 1). No host sync."""
    if seq <= window + 1:
        return keys
    position = torch.arange(seq, device=device)
    inside = (position[:, None] - position[None, :]).abs() <= window
    minimum = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=device)
    padding = keys.bias if keys.bias is not None else torch.zeros(1, 1, seq, dtype=dtype, device=device)
    bias = torch.where(inside, padding, minimum).expand(batch, seq, seq)
    return WindowMask(bias, None, has_keys=(bias > minimum).any(-1, keepdim=True))


class GrainModernBertPreTrainedModel(GrainBertPreTrainedModel):
    config_class = GrainModernBertConfig
    base_model_prefix = "model"
    _input_embed_layer = "tok_embeddings"

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ModernBertRotaryEmbedding):  # non-persistent tables: rebuilt, as transformers does
            for layer_type in module.layer_types:
                rope_type = module.rope_type[layer_type]
                init_fn = module.compute_default_rope_parameters if rope_type == "default" else ROPE_INIT_FUNCTIONS[rope_type]
                inv_freq, _ = init_fn(module.config, layer_type=layer_type)
                init.copy_(getattr(module, f"{layer_type}_inv_freq"), inv_freq)
                init.copy_(getattr(module, f"{layer_type}_original_inv_freq"), inv_freq)


class GrainModernBertModel(GrainModernBertPreTrainedModel):
    """Embeddings, the compact layers, the final norm; the rotary tables of every layer type."""

    def __init__(self, config: GrainModernBertConfig, add_pooling_layer: bool = False):
        super().__init__(config)
        self.embeddings = ModernBertEmbeddings(config)
        factorize_word_embeddings(self)
        self.layers = nn.ModuleList(GrainModernBertLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        self.rotary_emb = ModernBertRotaryEmbedding(config=config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.tok_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.tok_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                output_hidden_states: bool = False, **kwargs) -> BaseModelOutput:
        """input_ids, attention_mask [batch, seq] -> last_hidden_state [batch, seq, hidden] (after the
        final norm); hidden_states: the embeddings' output and every layer's, the last after the final
        norm, as transformers' ModernBertModel records them. token_type_ids are accepted and unused (ModernBERT has
        none)."""
        hidden = self.embeddings(input_ids=input_ids)
        masks, positions = self.layer_inputs(hidden, attention_mask, position_ids)
        states = [hidden]
        for layer in self.layers:
            hidden = layer(hidden, masks[layer.attention_type], positions[layer.attention_type])
            states.append(hidden)
        states[-1] = self.final_norm(hidden)
        return BaseModelOutput(last_hidden_state=states[-1], hidden_states=tuple(states) if output_hidden_states else None)

    def layer_inputs(self, hidden: torch.Tensor, attention_mask=None, position_ids=None) -> tuple[dict, dict]:
        """Per layer type of this model's layers: the mask ({type: KeyMask}; a `WindowMask` for sliding-window
        layers) and the rotary tables ({type: (cos, sin)}) for `hidden` [batch, seq, hidden]."""
        batch, seq, _ = hidden.shape
        if position_ids is None:
            position_ids = torch.arange(seq, device=hidden.device)[None]
        keys = KeyMask.of(attention_mask, hidden.dtype)
        types = {layer.attention_type for layer in self.layers}
        positions = {kind: self.rotary_emb(hidden, position_ids, kind) for kind in types}
        masks = {kind: keys for kind in types}
        if SLIDING in types:
            masks[SLIDING] = sliding_keys(keys, batch, seq, self.config.sliding_window, hidden.dtype, hidden.device)
        return masks, positions

    def sublayers(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Layer 0's attention and FFN sub-layers as calls on `hidden` [batch, seq, hidden] (each with its
        norm and residual; the attention with its rotary tables and mask), for timing them apart
        (`grain.measure.latency_model`)."""
        layer = self.layers[0]
        masks, positions = self.layer_inputs(hidden, attention_mask)
        keys, tables = masks[layer.attention_type], positions[layer.attention_type]
        return (lambda: hidden + layer.attn(layer.attn_norm(hidden), keys, tables)), \
            (lambda: hidden + layer.mlp(layer.mlp_norm(hidden)))


class ModernBertHead(TokenHead):
    """Base of the heads: the base model, ModernBertPredictionHead (`head`), dropout (`drop`) and the
    `classifier` Linear, named as transformers' ModernBERT heads."""

    base_model_class = GrainModernBertModel

    def __init__(self, config: GrainModernBertConfig):
        super().__init__(config)
        self.head = ModernBertPredictionHead(config)
        self.drop = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def classify(self, states: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [..., num_labels]: classifier(drop(head(states)))."""
        return self.classifier(self.drop(self.head(states)))


class GrainModernBertForSequenceClassification(GrainModernBertPreTrainedModel, ModernBertHead):
    """The first token's (`classifier_pooling` "cls") or the kept tokens' mean ("mean") final state."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=False, **kwargs) -> SequenceClassifierOutput:
        outputs = self.model(input_ids, attention_mask, output_hidden_states=output_hidden_states)
        hidden = outputs.last_hidden_state
        if self.config.classifier_pooling == "mean":
            kept = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            kept = kept[..., None].to(hidden.dtype)
            pooled = (hidden * kept).sum(1) / kept.sum(1)
        else:
            pooled = hidden[:, 0]
        logits = self.classify(pooled)
        loss = classification_loss(logits, labels, self.num_labels, self.config.problem_type)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class GrainModernBertForTokenClassification(Classifier, GrainModernBertPreTrainedModel, ModernBertHead):
    output_class = TokenClassifierOutput
    loss = GrainBertForTokenClassification.loss

    def logits(self, outputs) -> torch.Tensor:
        return self.classify(outputs.last_hidden_state)


class GrainModernBertForQuestionAnswering(GrainModernBertPreTrainedModel, ModernBertHead):
    forward = GrainBertForQuestionAnswering.forward
    answer = GrainBertForQuestionAnswering.answer

    def span_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classify(hidden)


COMPACT_FAMILY = CompactFamily(
    "modernbert", ("ModernBert",), GrainModernBertConfig, GrainModernBertModel,
    (GrainModernBertForSequenceClassification, GrainModernBertForTokenClassification,
     GrainModernBertForQuestionAnswering),
)

"""Compact DeBERTa-v2/v3: disentangled attention over heads of different QK/VO widths.

DeBERTa's embeddings (DebertaV2Embeddings), encoder (relative position embeddings, their LayerNorm,
the relative position buckets, the optional convolution after layer 0: DebertaV2Encoder) and heads
are HF's; each layer is the compact layer of `.bert` (ResidualOutput,
GrainIntermediate) around `GrainDisentangledAttention`.

The attention pads every kept head of a layer with zero Q/K (and V) columns to the layer's widest
head, so that the content-to-content, content-to-position and position-to-content scores are three
batched matmuls as in DeBERTa; zero columns add 0 to every score, and a head without QK units
attends uniformly, as in the masked model. The scale stays 1/sqrt(original head dim x the number of
score terms). Like HF's, the mask hides padded keys and padded queries (their rows attend
uniformly), so every position equals the masked model's.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DebertaV2Config
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.deberta_v2.modeling_deberta_v2 import ContextPooler, DebertaV2Embeddings, DebertaV2Encoder

from .bert import (
    Classifier,
    CompactFamily,
    CompactStructure,
    GrainAttention,
    GrainBertForQuestionAnswering,
    GrainBertForTokenClassification,
    GrainBertPreTrainedModel,
    GrainLayer,
    factorize_word_embeddings,
)
from .kernels import zero_padded


class GrainDebertaV2Config(CompactStructure, DebertaV2Config):
    """DebertaV2Config plus the kept structure (`CompactStructure`)."""

    model_type = "grain_deberta_v2"
    classifier_dropout = None  # DeBERTa's token classifier drops with hidden_dropout_prob
    __init__ = CompactStructure.__init__  # see GrainBertConfig


def padded_columns(dims: list[int], width: int, missing: int) -> list[int]:
    """For a [..., sum(dims)] tensor with a zero column appended at index `missing`: the columns that
    lay it out as [..., heads, width], each head's kept columns first, then the zero column."""
    columns, start = [], 0
    for dim in dims:
        columns += list(range(start, start + dim)) + [missing] * (width - dim)
        start += dim
    return columns


class GrainDisentangledAttention(nn.Module):
    """DeBERTa's disentangled self-attention (share_att_key) on the kept rows of W_q, W_k, W_v."""

    def __init__(self, config: GrainDebertaV2Config, index: int):
        super().__init__()
        self.qk_dims, self.vo_dims = list(config.qk_dims[index]), list(config.vo_dims[index])
        self.heads = len(self.vo_dims)
        self.qk_width, self.vo_width = max(self.qk_dims + [1]), max(self.vo_dims)
        self.query = nn.Linear(config.hidden_size, sum(self.qk_dims))
        self.key = nn.Linear(config.hidden_size, sum(self.qk_dims))
        self.value = nn.Linear(config.hidden_size, sum(self.vo_dims))
        self.pos_att_type = list(config.pos_att_type or [])
        self.relative_attention = getattr(config, "relative_attention", False)
        terms = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
        self.scale = (config.original_head_dim * terms) ** -0.5
        if self.relative_attention:
            buckets = getattr(config, "position_buckets", -1)
            max_relative = getattr(config, "max_relative_positions", -1)
            self.span = buckets if buckets > 0 else (max_relative if max_relative >= 1 else config.max_position_embeddings)
            self.pos_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self._columns = {
            "qk": padded_columns(self.qk_dims, self.qk_width, sum(self.qk_dims)),
            "vo": padded_columns(self.vo_dims, self.vo_width, sum(self.vo_dims)),
            # contexts [.., heads * vo_width] back to the kept VO units, in W_o's column order
            "context": [h * self.vo_width + j for h, dim in enumerate(self.vo_dims) for j in range(dim)],
        }
        self._indices: dict = {}  # per device; plain tensors, not buffers (from_pretrained leaves those unset)

    def _index(self, name: str, device) -> torch.Tensor:
        if (name, device) not in self._indices:
            self._indices[(name, device)] = torch.tensor(self._columns[name], dtype=torch.long, device=device)
        return self._indices[(name, device)]

    def _heads(self, projected: torch.Tensor, kind: str, width: int) -> torch.Tensor:
        """[..., seq, kept units] -> [..., heads, seq, width], zero columns padding each head."""
        padded = zero_padded(projected, 1, dim=-1)
        padded = padded.index_select(-1, self._index(kind, projected.device))
        return padded.unflatten(-1, (self.heads, width)).transpose(-3, -2)

    def forward(self, hidden, attention_mask, query_states=None, relative_pos=None, rel_embeddings=None,
                output_attentions=False):
        """hidden [batch, seq, hidden]; attention_mask [batch, 1, seq, seq] (query x key, as
        DebertaV2Encoder builds it) -> (contexts [batch, seq, kept VO units], None)."""
        if query_states is not None:
            raise NotImplementedError("compact DeBERTa runs without query_states (z_steps)")
        query = self._heads(self.query(hidden), "qk", self.qk_width)
        key = self._heads(self.key(hidden), "qk", self.qk_width)
        value = self._heads(self.value(hidden), "vo", self.vo_width)
        scores = torch.matmul(query, key.transpose(-1, -2)) * self.scale
        if self.relative_attention:
            scores = scores + self.relative_scores(query, key, relative_pos, self.pos_dropout(rel_embeddings))
        scores = scores.masked_fill(~attention_mask.bool(), torch.finfo(scores.dtype).min)
        probs = self.dropout(F.softmax(scores, dim=-1))
        contexts = torch.matmul(probs, value).transpose(1, 2).flatten(2)  # [batch, seq, heads * vo_width]
        return contexts.index_select(-1, self._index("context", contexts.device)), None

    def relative_scores(self, query, key, relative_pos, rel_embeddings) -> torch.Tensor:
        """Content-to-position and position-to-content scores [batch, heads, seq, seq]; query, key:
        [batch, heads, seq, qk_width]; relative_pos [1, seq, seq] bucketed distances."""
        if relative_pos.dim() == 2:
            relative_pos = relative_pos[None, None]
        elif relative_pos.dim() == 3:
            relative_pos = relative_pos[:, None]
        relative_pos = relative_pos.to(device=query.device, dtype=torch.long)
        positions = rel_embeddings[: 2 * self.span]
        batch, heads, seq, _ = query.shape
        score = 0
        if "c2p" in self.pos_att_type:
            pos_key = self._heads(self.key(positions), "qk", self.qk_width)  # [heads, 2 span, qk_width]
            c2p = torch.matmul(query, pos_key.transpose(-1, -2))
            index = torch.clamp(relative_pos + self.span, 0, 2 * self.span - 1).expand(batch, heads, seq, seq)
            score = score + torch.gather(c2p, -1, index) * self.scale
        if "p2c" in self.pos_att_type:
            pos_query = self._heads(self.query(positions), "qk", self.qk_width)
            p2c = torch.matmul(key, pos_query.transpose(-1, -2))
            index = torch.clamp(-relative_pos + self.span, 0, 2 * self.span - 1).expand(batch, heads, seq, seq)
            score = score + torch.gather(p2c, -1, index).transpose(-1, -2) * self.scale
        return score


class GrainDebertaAttention(GrainAttention):
    self_attention_class = GrainDisentangledAttention

    def forward(self, hidden, attention_mask, relative_pos=None, rel_embeddings=None) -> torch.Tensor:
        if not self.has_heads:
            return self.output(None, hidden)
        contexts, _ = self.self(hidden, attention_mask, relative_pos=relative_pos, rel_embeddings=rel_embeddings)
        return self.output(contexts, hidden)


class GrainDebertaLayer(GrainLayer):
    """The compact layer, called as DebertaV2Encoder calls its layers."""

    attention_class = GrainDebertaAttention

    def forward(self, hidden_states, attention_mask, query_states=None, relative_pos=None, rel_embeddings=None,
                output_attentions=False):
        if query_states is not None:
            raise NotImplementedError("compact DeBERTa runs without query_states (z_steps)")
        attended = self.attention(hidden_states, attention_mask, relative_pos, rel_embeddings)
        activation = self.intermediate(attended) if self.intermediate is not None else None
        return self.output(activation, attended), None


def relative_positions(seq: int, buckets: int, max_position: int, device) -> torch.Tensor:
    """[1, seq, seq] relative distances query - key, log-bucketed as DeBERTa's
    `build_relative_position` does, computed on `device` (HF's makes CPU scalar tensors)."""
    ids = torch.arange(seq, dtype=torch.long, device=device)
    relative = ids[:, None] - ids[None, :]
    if buckets > 0 and max_position > 0:
        mid = buckets // 2
        sign = torch.sign(relative)
        inside = (relative < mid) & (relative > -mid)
        distance = torch.where(inside, torch.full_like(relative, mid - 1), relative.abs())
        scale = torch.log(torch.tensor((max_position - 1) / mid, device=device))  # float32, as HF's
        log_pos = torch.ceil(torch.log(distance / mid) / scale * (mid - 1)) + mid
        relative = torch.where(distance <= mid, relative.to(log_pos.dtype), log_pos * sign)
    return relative.long()[None]


class GrainDebertaV2PreTrainedModel(GrainBertPreTrainedModel):
    config_class = GrainDebertaV2Config
    base_model_prefix = "deberta"


class GrainDebertaV2Model(GrainDebertaV2PreTrainedModel):
    def __init__(self, config: GrainDebertaV2Config, add_pooling_layer: bool = False):
        super().__init__(config)
        self.embeddings = DebertaV2Embeddings(config)
        factorize_word_embeddings(self)
        without_layers = copy.deepcopy(config)
        without_layers.num_hidden_layers = 0
        self.encoder = DebertaV2Encoder(without_layers)  # relative embeddings, their LayerNorm, conv
        self.encoder.layer = nn.ModuleList(GrainDebertaLayer(config, i) for i in range(config.num_hidden_layers))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                output_hidden_states: bool = False, **kwargs) -> BaseModelOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embedded = self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, mask=attention_mask
        )
        relative_pos = None
        if self.encoder.relative_attention:
            relative_pos = relative_positions(
                input_ids.shape[1], self.encoder.position_buckets, self.encoder.max_relative_positions, input_ids.device
            )
        encoded = self.encoder(
            embedded, attention_mask, output_hidden_states=True, relative_pos=relative_pos, return_dict=True
        )
        return BaseModelOutput(
            last_hidden_state=encoded.last_hidden_state,
            hidden_states=encoded.hidden_states if output_hidden_states else None,
        )


class GrainDebertaV2ForSequenceClassification(Classifier, GrainDebertaV2PreTrainedModel):
    """ContextPooler (dense and activation on [CLS]), dropout and classifier, as DeBERTa's."""

    def __init__(self, config: GrainDebertaV2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deberta = GrainDebertaV2Model(config)
        self.pooler = ContextPooler(config)
        self.classifier = nn.Linear(self.pooler.output_dim, config.num_labels)
        dropout = getattr(config, "cls_dropout", None)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.post_init()

    def logits(self, outputs) -> torch.Tensor:
        return self.classifier(self.dropout(self.pooler(outputs.last_hidden_state)))


class GrainDebertaV2ForTokenClassification(GrainDebertaV2PreTrainedModel, GrainBertForTokenClassification):
    base_model_class = GrainDebertaV2Model


class GrainDebertaV2ForQuestionAnswering(GrainDebertaV2PreTrainedModel, GrainBertForQuestionAnswering):
    base_model_class = GrainDebertaV2Model


COMPACT_FAMILY = CompactFamily(
    "deberta-v2", ("DebertaV2",), GrainDebertaV2Config, GrainDebertaV2Model,
    (GrainDebertaV2ForSequenceClassification, GrainDebertaV2ForTokenClassification, GrainDebertaV2ForQuestionAnswering),
)

"""The compact model: a dense BERT holding only the kept units, with heads of different sizes.

Every layer keeps its own list of heads, each with its own QK width and VO width; the attention
scale stays 1/sqrt(original head dim), so the compact model computes exactly what the masked model
does. A head with VO units but no QK units attends uniformly (its scores are all zero). A layer
without VO (or FFN) units keeps only that sub-layer's output bias before the LayerNorm.

Attention for heterogeneous heads: Q/K are scattered into a [heads, max_qk] layout and V into
[heads, max_vo] (zeros elsewhere, which change no dot product) so one
`scaled_dot_product_attention` call serves all heads; layers whose heads share one size skip the
scatter. The classes register with the HF Auto classes (`import grain` first), so
`AutoModelForSequenceClassification.from_pretrained(dir)` loads a saved compact model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
)
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.models.bert.modeling_bert import BertEmbeddings, BertPooler, BertPreTrainedModel


class GrainBertConfig(BertConfig):
    """BertConfig plus the kept structure.

    qk_dims / vo_dims: per layer, the QK and VO width of every kept head (heads without VO units are
    dropped); ffn_dims: per layer, the number of kept FFN neurons; embedding_rank: rank of the
    factorized word embeddings (None: full).
    """

    model_type = "grain_bert"

    def __init__(self, qk_dims=None, vo_dims=None, ffn_dims=None, original_head_dim=None, embedding_rank=None, **kwargs):
        super().__init__(**kwargs)
        layers = self.num_hidden_layers
        head_dim = self.hidden_size // self.num_attention_heads
        self.qk_dims = qk_dims if qk_dims is not None else [[head_dim] * self.num_attention_heads] * layers
        self.vo_dims = vo_dims if vo_dims is not None else [[head_dim] * self.num_attention_heads] * layers
        self.ffn_dims = ffn_dims if ffn_dims is not None else [self.intermediate_size] * layers
        self.original_head_dim = original_head_dim or head_dim
        self.embedding_rank = embedding_rank


def _scatter_index(widths: list[int], slot: int) -> torch.Tensor:
    """Positions of each head's kept dims inside a [heads * slot] layout."""
    return torch.cat([torch.arange(w) + h * slot for h, w in enumerate(widths)] or [torch.zeros(0)]).long()


class GrainSelfAttention(nn.Module):
    def __init__(self, config: GrainBertConfig, index: int):
        super().__init__()
        self.qk_dims, self.vo_dims = list(config.qk_dims[index]), list(config.vo_dims[index])
        self.num_heads = len(self.vo_dims)
        self.query = nn.Linear(config.hidden_size, sum(self.qk_dims))
        self.key = nn.Linear(config.hidden_size, sum(self.qk_dims))
        self.value = nn.Linear(config.hidden_size, sum(self.vo_dims))
        self.scale = config.original_head_dim ** -0.5
        self.dropout_p = config.attention_probs_dropout_prob
        self.max_qk = max(self.qk_dims + [1])
        self.max_vo = max(self.vo_dims + [1])
        self.same_sizes = len(set(self.qk_dims)) == 1 and len(set(self.vo_dims)) == 1 and self.qk_dims[0] > 0
        self.register_buffer("qk_index", _scatter_index(self.qk_dims, self.max_qk))
        self.register_buffer("vo_index", _scatter_index(self.vo_dims, self.max_vo))

    def _heads(self, states: torch.Tensor, index: torch.Tensor, slot: int) -> torch.Tensor:
        """[batch, seq, kept dims] -> [batch, heads, seq, slot]."""
        batch, seq, _ = states.shape
        if not self.same_sizes:
            states = states.new_zeros(batch, seq, self.num_heads * slot).index_copy(2, index, states)
        return states.view(batch, seq, self.num_heads, slot).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        qk_slot = self.qk_dims[0] if self.same_sizes else self.max_qk
        vo_slot = self.vo_dims[0] if self.same_sizes else self.max_vo
        query = self._heads(self.query(hidden), self.qk_index, qk_slot)
        key = self._heads(self.key(hidden), self.qk_index, qk_slot)
        value = self._heads(self.value(hidden), self.vo_index, vo_slot)
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=self.scale,
            dropout_p=self.dropout_p if self.training else 0.0,
        )
        context = context.transpose(1, 2).reshape(batch, seq, self.num_heads * vo_slot)
        return context if self.same_sizes else context.index_select(2, self.vo_index)


class ResidualOutput(nn.Module):
    """dense(x) -> dropout -> LayerNorm(. + residual); with no kept units, only dense's bias remains."""

    def __init__(self, config: GrainBertConfig, in_features: int):
        super().__init__()
        if in_features > 0:
            self.dense = nn.Linear(in_features, config.hidden_size)
        else:
            self.bias = nn.Parameter(torch.zeros(config.hidden_size))
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, states: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
        update = self.dense(states) if hasattr(self, "dense") else self.bias.expand_as(residual)
        return self.LayerNorm(self.dropout(update) + residual)


class GrainAttention(nn.Module):
    def __init__(self, config: GrainBertConfig, index: int):
        super().__init__()
        self.has_heads = len(config.vo_dims[index]) > 0
        if self.has_heads:
            self.self = GrainSelfAttention(config, index)
        self.output = ResidualOutput(config, sum(config.vo_dims[index]))

    def forward(self, hidden: torch.Tensor, attention_mask) -> torch.Tensor:
        context = self.self(hidden, attention_mask) if self.has_heads else None
        return self.output(context, hidden)


class GrainIntermediate(nn.Module):
    def __init__(self, config: GrainBertConfig, width: int):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, width)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden))


class GrainLayer(nn.Module):
    def __init__(self, config: GrainBertConfig, index: int):
        super().__init__()
        width = config.ffn_dims[index]
        self.attention = GrainAttention(config, index)
        self.intermediate = GrainIntermediate(config, width) if width > 0 else None
        self.output = ResidualOutput(config, width)

    def forward(self, hidden: torch.Tensor, attention_mask) -> torch.Tensor:
        attended = self.attention(hidden, attention_mask)
        activation = self.intermediate(attended) if self.intermediate is not None else None
        return self.output(activation, attended)


class FactorizedEmbedding(nn.Module):
    """Word embeddings as [vocab, rank] @ [rank, hidden] (truncated SVD of the full matrix)."""

    def __init__(self, vocab_size: int, rank: int, hidden_size: int, padding_idx: int | None):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, rank, padding_idx=padding_idx)
        self.projection = nn.Linear(rank, hidden_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.projection(self.embedding(input_ids))


class GrainBertPreTrainedModel(BertPreTrainedModel):
    config_class = GrainBertConfig
    base_model_prefix = "bert"
    _can_record_outputs = {}  # hidden states are returned by GrainBertModel itself


class GrainBertModel(GrainBertPreTrainedModel):
    def __init__(self, config: GrainBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        if config.embedding_rank:
            self.embeddings.word_embeddings = FactorizedEmbedding(
                config.vocab_size, config.embedding_rank, config.hidden_size, config.pad_token_id
            )
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(GrainLayer(config, i) for i in range(config.num_hidden_layers))
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids)
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        states = [hidden]
        for layer in self.encoder.layer:
            hidden = layer(hidden, mask)
            states.append(hidden)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden, pooler_output=pooled,
            hidden_states=tuple(states) if output_hidden_states else None,
        )


class GrainBertForSequenceClassification(GrainBertPreTrainedModel):
    def __init__(self, config: GrainBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = GrainBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout or config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, output_hidden_states=False, **kwargs):
        outputs = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            loss = (
                F.mse_loss(logits.squeeze(-1), labels.float()) if self.num_labels == 1
                else F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            )
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class GrainBertForTokenClassification(GrainBertPreTrainedModel):
    def __init__(self, config: GrainBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = GrainBertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.classifier_dropout or config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, output_hidden_states=False, **kwargs):
        outputs = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None if labels is None else F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class GrainBertForQuestionAnswering(GrainBertPreTrainedModel):
    def __init__(self, config: GrainBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = GrainBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, start_positions=None, end_positions=None,
        output_hidden_states=False, **kwargs,
    ):
        outputs = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states=output_hidden_states)
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).split(1, dim=-1)
        start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.size(1)
            start_positions, end_positions = start_positions.clamp(0, ignored), end_positions.clamp(0, ignored)
            loss = (
                F.cross_entropy(start_logits, start_positions, ignore_index=ignored)
                + F.cross_entropy(end_logits, end_positions, ignore_index=ignored)
            ) / 2
        return QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits, hidden_states=outputs.hidden_states
        )


COMPACT_CLASS_BY_HF_HEAD = {
    "BertForSequenceClassification": GrainBertForSequenceClassification,
    "BertForTokenClassification": GrainBertForTokenClassification,
    "BertForQuestionAnswering": GrainBertForQuestionAnswering,
    "GrainBertForSequenceClassification": GrainBertForSequenceClassification,
    "GrainBertForTokenClassification": GrainBertForTokenClassification,
    "GrainBertForQuestionAnswering": GrainBertForQuestionAnswering,
}


def register_auto_classes() -> None:
    AutoConfig.register("grain_bert", GrainBertConfig, exist_ok=True)
    AutoModel.register(GrainBertConfig, GrainBertModel, exist_ok=True)
    AutoModelForSequenceClassification.register(GrainBertConfig, GrainBertForSequenceClassification, exist_ok=True)
    AutoModelForTokenClassification.register(GrainBertConfig, GrainBertForTokenClassification, exist_ok=True)
    AutoModelForQuestionAnswering.register(GrainBertConfig, GrainBertForQuestionAnswering, exist_ok=True)

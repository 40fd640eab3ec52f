"""The compact model: a dense BERT holding only the kept units, with heads of different sizes.

Every layer keeps its own list of heads, each with its own QK width and VO width; the attention
scale stays 1/sqrt(original head dim), so the compact model computes exactly what the masked model
does. A head with VO units but no QK units attends uniformly (its scores are all zero). A layer
without VO (or FFN) units keeps only that sub-layer's output bias before the LayerNorm.

Attention for heterogeneous heads: Q, K and V are scattered into a [heads, slot] layout, slot being
the layer's largest head width (zeros elsewhere, which change no dot product and add only zero
output columns), so one `scaled_dot_product_attention` call serves all heads; layers whose heads
share one size skip the scatter. The classes register with the HF Auto classes (`import grain` first), so
`AutoModelForSequenceClassification.from_pretrained(dir)` loads a saved compact model.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class HeadGroup:
    """Heads that share one SDPA call, each padded to the group's slot width.

    *_src: positions of the group's kept dims in the compact projection output; *_dst: where they go
    in the padded [heads * slot] layout. uniform: the heads have no QK units, so their attention is
    uniform over the unmasked keys and needs no scores at all.
    """

    size: int
    slot: int
    uniform: bool
    qk_src: list[int]
    qk_dst: list[int]
    vo_src: list[int]
    vo_dst: list[int]


def _cheapest_split(widths: list[int], max_groups: int) -> list[int]:
    """Cut points splitting widths (sorted, largest first) into <= max_groups runs that minimize the
    padded size sum(run length * run's largest width)."""
    n = len(widths)
    best = {(0, 0): (0, [])}
    for groups in range(1, max_groups + 1):
        for end in range(1, n + 1):
            options = [
                (best[(start, groups - 1)][0] + (end - start) * widths[start], best[(start, groups - 1)][1] + [end])
                for start in range(end) if (start, groups - 1) in best
            ]
            if options:
                best[(end, groups)] = min(options)
    return min((best[(n, g)] for g in range(1, max_groups + 1) if (n, g) in best), default=(0, []))[1]


def plan_head_groups(qk_dims: list[int], vo_dims: list[int], max_groups: int = 3) -> list[HeadGroup]:
    """Group a layer's heads to limit padding: heads without QK units on their own, the others sorted
    by width and split into at most `max_groups` runs."""
    qk_start = [sum(qk_dims[:h]) for h in range(len(qk_dims))]
    vo_start = [sum(vo_dims[:h]) for h in range(len(vo_dims))]
    uniform = [h for h in range(len(vo_dims)) if qk_dims[h] == 0]
    scored = sorted((h for h in range(len(vo_dims)) if qk_dims[h] > 0), key=lambda h: -max(qk_dims[h], vo_dims[h]))
    runs, start = [], 0
    for end in _cheapest_split([max(qk_dims[h], vo_dims[h]) for h in scored], max_groups):
        runs.append((scored[start:end], False))
        start = end
    if uniform:
        runs.append((uniform, True))
    groups = []
    for heads, is_uniform in runs:
        slot = max(max(vo_dims[h], qk_dims[h]) for h in heads)
        group = {"qk_src": [], "qk_dst": [], "vo_src": [], "vo_dst": []}
        for i, h in enumerate(heads):
            group["qk_src"] += range(qk_start[h], qk_start[h] + qk_dims[h])
            group["qk_dst"] += range(i * slot, i * slot + qk_dims[h])
            group["vo_src"] += range(vo_start[h], vo_start[h] + vo_dims[h])
            group["vo_dst"] += range(i * slot, i * slot + vo_dims[h])
        groups.append(HeadGroup(len(heads), slot, is_uniform, **group))
    return groups


class GrainSelfAttention(nn.Module):
    """Attention over heads of different QK/VO widths.

    Heads are grouped (`plan_head_groups`); within a group Q, K and V are scattered into one
    [heads, slot] layout (zeros change no dot product and only add zero output columns) so a single
    `scaled_dot_product_attention` call serves the group. Equal Q/K/V widths let SDPA use its fused
    kernel (3x faster on CPU than the unfused path different widths force). Heads without QK units
    attend uniformly: their context is the mean of V over the unmasked keys (no attention dropout
    there, the only difference from the masked model, and only in training).
    """

    def __init__(self, config: GrainBertConfig, index: int):
        super().__init__()
        self.qk_dims, self.vo_dims = list(config.qk_dims[index]), list(config.vo_dims[index])
        self.num_heads = len(self.vo_dims)
        self.query = nn.Linear(config.hidden_size, sum(self.qk_dims))
        self.key = nn.Linear(config.hidden_size, sum(self.qk_dims))
        self.value = nn.Linear(config.hidden_size, sum(self.vo_dims))
        self.scale = config.original_head_dim ** -0.5
        self.dropout_p = config.attention_probs_dropout_prob
        self.groups = plan_head_groups(self.qk_dims, self.vo_dims)
        width = len(set(self.qk_dims + self.vo_dims)) == 1
        self.no_padding = width and len(self.groups) == 1 and not self.groups[0].uniform
        # Where each kept VO dim (compact order) sits in the groups' concatenated padded output.
        gather, offset = [0] * sum(self.vo_dims), 0
        for group in self.groups:
            for src, dst in zip(group.vo_src, group.vo_dst):
                gather[src] = offset + dst
            offset += group.size * group.slot
        self._gather = gather
        self._indices: dict = {}  # per device; plain tensors, not buffers (from_pretrained leaves those unset)

    def _index(self, values: list[int], device) -> torch.Tensor:
        key = (id(values), device)
        if key not in self._indices:
            self._indices[key] = torch.tensor(values, dtype=torch.long, device=device)
        return self._indices[key]

    def _scatter(self, states: torch.Tensor, src: list[int], dst: list[int], group: HeadGroup) -> torch.Tensor:
        """[batch, seq, compact dims] -> [batch, heads, seq, slot] for one group."""
        batch, seq, _ = states.shape
        if not self.no_padding:
            picked = states.index_select(2, self._index(src, states.device))
            states = states.new_zeros(batch, seq, group.size * group.slot).index_copy(2, self._index(dst, states.device), picked)
        return states.view(batch, seq, group.size, group.slot).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        value_all = self.value(hidden)
        query_all = self.query(hidden) if any(not g.uniform for g in self.groups) else None
        key_all = self.key(hidden) if query_all is not None else None
        contexts = []
        for group in self.groups:
            value = self._scatter(value_all, group.vo_src, group.vo_dst, group)
            if group.uniform:
                if attention_mask is None:
                    weights = value.new_full((batch, seq), 1.0 / seq)
                else:
                    weights = attention_mask[:, 0, 0, :].to(value.dtype)
                    weights = weights / weights.sum(-1, keepdim=True)
                context = torch.einsum("bk,bhkd->bhd", weights, value)[:, :, None, :].expand(-1, -1, seq, -1)
            else:
                query = self._scatter(query_all, group.qk_src, group.qk_dst, group)
                key = self._scatter(key_all, group.qk_src, group.qk_dst, group)
                context = F.scaled_dot_product_attention(
                    query, key, value, attn_mask=attention_mask, scale=self.scale,
                    dropout_p=self.dropout_p if self.training else 0.0,
                )
            contexts.append(context.transpose(1, 2).reshape(batch, seq, group.size * group.slot))
        padded = contexts[0] if len(contexts) == 1 else torch.cat(contexts, dim=2)
        return padded if self.no_padding else padded.index_select(2, self._index(self._gather, padded.device))


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
        # (zeros + bias rather than a broadcast view: dropout then draws per token, as in the masked model)
        update = self.dense(states) if hasattr(self, "dense") else torch.zeros_like(residual) + self.bias
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

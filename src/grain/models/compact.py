"""The compact model: a dense BERT holding only the kept units, with heads of different sizes.

Every layer keeps its own list of heads, each with its own QK width and VO width; the attention
scale stays 1/sqrt(original head dim), so the compact model computes exactly what the masked model
does. A head with VO units but no QK units attends uniformly (its scores are all zero). A layer
without VO (or FFN) units keeps only that sub-layer's output bias before the LayerNorm.

Attention for heterogeneous heads: heads are grouped by width (at most three groups, plus one for
heads without QK units); within a group Q, K and V are padded to the group's widest head (zeros
change no dot product and add only zero output columns), so one `scaled_dot_product_attention`
call serves the group. Q, K and V of all groups come from one fused matmul and one gather.
The classes register with the HF Auto classes (`import grain` first), so
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
    """Heads that share one attention call, each padded to the group's `slot` width.

    uniform: the heads have no QK units, so their attention is uniform over the unmasked keys; the
    context is then the masked mean of V, computed per dimension, so the group is one pseudo-head
    of slot = its total VO width (no padding).
    """

    heads: tuple[int, ...]
    slot: int
    uniform: bool

    @property
    def width(self) -> int:
        """Columns the group takes in each of its Q/K/V blocks (a uniform group: one pseudo-head)."""
        return self.slot if self.uniform else len(self.heads) * self.slot


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
                best[(end, groups)] = min(options, key=_fewest_calls)
    finals = [best[(n, g)] for g in range(1, max_groups + 1) if (n, g) in best]
    return min(finals, key=_fewest_calls, default=(0, []))[1]


def _fewest_calls(option: tuple[int, list[int]]) -> tuple[int, int]:
    """Least padding first; among equal padding, fewer groups (attention calls)."""
    return option[0], len(option[1])


def plan_head_groups(qk_dims: list[int], vo_dims: list[int], max_groups: int = 3) -> list[HeadGroup]:
    """Group a layer's heads to limit padding: heads with QK units sorted by width and split into at
    most `max_groups` runs, then one group for the heads with VO units only."""
    scored = sorted((h for h in range(len(vo_dims)) if qk_dims[h] > 0), key=lambda h: -max(qk_dims[h], vo_dims[h]))
    groups, start = [], 0
    for end in _cheapest_split([max(qk_dims[h], vo_dims[h]) for h in scored], max_groups):
        heads = tuple(scored[start:end])
        groups.append(HeadGroup(heads, max(max(qk_dims[h], vo_dims[h]) for h in heads), uniform=False))
        start = end
    uniform = tuple(h for h in range(len(vo_dims)) if qk_dims[h] == 0 and vo_dims[h] > 0)
    if uniform:
        groups.append(HeadGroup(uniform, sum(vo_dims[h] for h in uniform), uniform=True))
    return groups


@dataclass(frozen=True)
class AttentionLayout:
    """Where every padded Q/K/V column comes from, and where every kept VO dim ends up.

    The fused projection computes [Q | K | V | 0] (the compact rows plus one zero column); `select`
    picks, for each column of the padded layout, its source column (the zero one for padding), so
    one gather builds the padded Q, K and V of every group. `blocks` holds (offset, group) of each
    group's [Q | K | V] (uniform groups: [V]) in that layout; `gather` puts the groups' contexts back
    in compact VO order for the output projection. None: the layout is the identity.
    """

    select: list[int] | None
    blocks: list[tuple[int, HeadGroup]]
    gather: list[int] | None

    @classmethod
    def plan(cls, qk_dims: list[int], vo_dims: list[int], max_groups: int = 3) -> "AttentionLayout":
        qk_total, vo_total = sum(qk_dims), sum(vo_dims)
        qk_start = [sum(qk_dims[:h]) for h in range(len(qk_dims))]
        vo_start = [2 * qk_total + sum(vo_dims[:h]) for h in range(len(vo_dims))]
        zero = 2 * qk_total + vo_total
        select, blocks, gather, context_offset = [], [], [0] * vo_total, 0
        for group in plan_head_groups(qk_dims, vo_dims, max_groups):
            blocks.append((len(select), group))
            if group.uniform:
                value = [vo_start[h] + j for h in group.heads for j in range(vo_dims[h])]
            else:
                query, key, value = [], [], []
                for h in group.heads:
                    query += [qk_start[h] + j if j < qk_dims[h] else zero for j in range(group.slot)]
                    key += [qk_total + qk_start[h] + j if j < qk_dims[h] else zero for j in range(group.slot)]
                    value += [vo_start[h] + j if j < vo_dims[h] else zero for j in range(group.slot)]
                select += query + key
            select += value
            for position, column in enumerate(value):
                if column != zero:
                    gather[column - 2 * qk_total] = context_offset + position
            context_offset += len(value)
        identity = lambda columns, n: columns == list(range(n))  # noqa: E731
        return cls(
            select=None if identity(select, zero) else select,
            blocks=blocks,
            gather=None if identity(gather, vo_total) and context_offset == vo_total else gather,
        )


class GrainSelfAttention(nn.Module):
    """Attention over heads of different QK/VO widths.

    Heads are grouped (`plan_head_groups`); within a group Q, K and V are padded to one [heads, slot]
    layout (zeros change no dot product and only add zero output columns) so a single
    `scaled_dot_product_attention` call serves the group. Equal Q/K/V widths let SDPA use its fused
    kernel (3x faster on CPU than the unfused path different widths force). Q, K and V come from one
    fused matmul and are padded by one gather (`AttentionLayout`). Heads without QK units attend
    uniformly: their context is the mean of V over the unmasked keys (no attention dropout there,
    the only difference from the masked model, and only in training).
    """

    def __init__(self, config: GrainBertConfig, index: int):
        super().__init__()
        self.qk_dims, self.vo_dims = list(config.qk_dims[index]), list(config.vo_dims[index])
        self.query = nn.Linear(config.hidden_size, sum(self.qk_dims))
        self.key = nn.Linear(config.hidden_size, sum(self.qk_dims))
        self.value = nn.Linear(config.hidden_size, sum(self.vo_dims))
        self.scale = config.original_head_dim ** -0.5
        self.dropout_p = config.attention_probs_dropout_prob
        self.layout = AttentionLayout.plan(self.qk_dims, self.vo_dims)
        self._indices: dict = {}  # per device; plain tensors, not buffers (from_pretrained leaves those unset)

    def _index(self, name: str, device) -> torch.Tensor:
        if (name, device) not in self._indices:
            self._indices[(name, device)] = torch.tensor(getattr(self.layout, name), dtype=torch.long, device=device)
        return self._indices[(name, device)]

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        """[batch, seq, hidden] -> the padded [Q | K | V] columns of every group, by one matmul + one gather.

        The matmul computes only kept rows and the gather pads them. Padding the weight rows instead
        (no gather) measured no faster on CPU (MiniLM at 0.9: 80-90 ms either way) and computes ~15%
        more FLOPs, since a head's Q/K are padded to its V width."""
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        if self.layout.select is None:
            return F.linear(hidden, weight, bias)
        weight = torch.cat([weight, weight.new_zeros(1, weight.shape[1])])  # the zero column padding reads
        bias = torch.cat([bias, bias.new_zeros(1)])
        return F.linear(hidden, weight, bias).index_select(2, self._index("select", hidden.device))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        projected = self._project(hidden)
        contexts = []
        for offset, group in self.layout.blocks:
            width = group.width
            if group.uniform:
                value = projected[:, :, offset:offset + width]
                if attention_mask is None:
                    context = value.mean(1)
                else:
                    weights = attention_mask[:, 0, 0, :].to(value.dtype)
                    context = torch.einsum("bk,bkd->bd", weights / weights.sum(-1, keepdim=True), value)
                contexts.append(context[:, None, :].expand(-1, seq, -1))
                continue
            query, key, value = (
                projected[:, :, offset + i * width:offset + (i + 1) * width]
                .view(batch, seq, len(group.heads), group.slot).transpose(1, 2)
                for i in range(3)
            )
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, scale=self.scale,
                dropout_p=self.dropout_p if self.training else 0.0,
            )
            contexts.append(context.transpose(1, 2).reshape(batch, seq, width))
        padded = contexts[0] if len(contexts) == 1 else torch.cat(contexts, dim=2)
        return padded if self.layout.gather is None else padded.index_select(2, self._index("gather", padded.device))


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

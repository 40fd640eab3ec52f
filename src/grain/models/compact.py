"""The compact model: a dense BERT holding only the kept units, with heads of different sizes.

Every layer keeps its own list of heads, each with its own QK width and VO width; the attention
scale stays 1/sqrt(original head dim), so the compact model computes exactly what the masked model
does. A head with VO units but no QK units attends uniformly (its scores are all zero). A layer
without VO (or FFN) units keeps only that sub-layer's output bias before the LayerNorm.

Attention for heterogeneous heads: heads of equal (QK, VO) widths share one batched attention
(`plan_head_groups`), with no padding; Q, K and V of all groups come from one matmul whose weight is
assembled from the kept rows (`AttentionLayout`). Heads without QK units attend uniformly, so their
context is V of the mean hidden state. Matmul widths are padded to multiples of 8 with zero weights,
which MKL runs faster; the padding is exact and its FLOPs are reported apart (grain.bench).
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


def round_up(width: int, multiple: int = 8) -> int:
    """Matmul output widths are padded to a multiple of 8: MKL's CPU sgemm runs ~2x slower on widths
    that are not (MiniLM, [4096, 384] @ [384, N]: N=23 0.87 ms, N=24 0.49 ms), and GPUs want them too."""
    return -(-width // multiple) * multiple


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


def plan_head_groups(qk_dims: list[int], vo_dims: list[int]) -> list[HeadGroup]:
    """Group the heads with both QK and VO units by their (QK, VO) widths, widest first: one batched
    attention per group, with no padding. (Padding heads to share fewer, larger calls measured slower
    on CPU: MiniLM at 0.9, batch 32 x 128, at most 3 groups per layer 78 ms, one group per width 74 ms.)
    Only a QK width of 1 is padded to 2: that batched matmul is 4x slower than width 2 in MKL.
    Heads without VO units add nothing and are left out; heads without QK units attend uniformly and
    are handled apart (`AttentionLayout.uniform_vo`)."""
    widths: dict[tuple[int, int], list[int]] = {}
    for h in range(len(vo_dims)):
        if qk_dims[h] > 0 and vo_dims[h] > 0:
            widths.setdefault((max(qk_dims[h], 2), vo_dims[h]), []).append(h)
    return [HeadGroup(tuple(heads), qk, vo) for (qk, vo), heads in sorted(widths.items(), reverse=True)]


@dataclass(frozen=True)
class AttentionLayout:
    """Where the columns of the fused projection come from, and where the contexts go.

    The projection computes, group after group, [Q | K | V] of the group's heads (Q and K padded to
    the group's QK slot), then zero columns up to a multiple of 8 (`round_up`).
    `projection_rows[i]` is the row of [W_q; W_k; W_v; 0] that column i reads (the last, zero row for
    padding); `context_columns[j]` is the column of W_o (compact VO order) that context j multiplies.
    Uniform heads (VO units, no QK units) stay out of both: their context is the same at every
    position (`uniform_vo`: their VO columns). `padding_columns` counts the projection columns that
    read the zero row, `padded_qk` the QK columns heads gain from their group's slot (the FLOPs they
    cost are reported apart from the kept units', grain.bench.flops.padding_flops).
    """

    groups: list[HeadGroup]
    projection_rows: list[int]
    context_columns: list[int]
    uniform_vo: list[int]
    padding_columns: int
    padded_qk: int

    @classmethod
    def plan(cls, qk_dims: list[int], vo_dims: list[int]) -> "AttentionLayout":
        qk_total, vo_total = sum(qk_dims), sum(vo_dims)
        qk_start = [sum(qk_dims[:h]) for h in range(len(qk_dims))]
        vo_start = [sum(vo_dims[:h]) for h in range(len(vo_dims))]
        zero_row = 2 * qk_total + vo_total
        groups = plan_head_groups(qk_dims, vo_dims)
        rows, context_columns = [], []
        for group in groups:
            for base in (0, qk_total):  # Q rows, then K rows
                for h in group.heads:
                    rows += [base + qk_start[h] + j if j < qk_dims[h] else zero_row for j in range(group.qk_slot)]
            values = [vo_start[h] + j for h in group.heads for j in range(vo_dims[h])]
            rows += [2 * qk_total + c for c in values]  # V rows
            context_columns += values
        rows += [zero_row] * (round_up(len(rows)) - len(rows))
        uniform_vo = [vo_start[h] + j for h in range(len(vo_dims)) if qk_dims[h] == 0 for j in range(vo_dims[h])]
        padded_qk = sum(group.qk_slot - qk_dims[h] for group in groups for h in group.heads)
        return cls(groups, rows, context_columns, uniform_vo, rows.count(zero_row), padded_qk)


@dataclass(frozen=True)
class KeyMask:
    """The attention mask in the two forms the compact attention uses, built once per forward.

    bias: [batch, 1, seq], 0 for kept keys and the dtype's minimum for padding (None: every key is
    kept, so no bias is added); weights: [batch, seq] that average over kept keys (None: plain mean).
    """

    bias: torch.Tensor | None
    weights: torch.Tensor | None

    @classmethod
    def of(cls, attention_mask: torch.Tensor | None, dtype: torch.dtype) -> "KeyMask":
        if attention_mask is None or bool(attention_mask.all()):
            return cls(None, None)
        kept = attention_mask.to(dtype)
        bias = (1.0 - kept)[:, None, :] * torch.finfo(dtype).min
        return cls(bias, kept / kept.sum(-1, keepdim=True).clamp_min(1))


def use_fused_attention(device: torch.device) -> bool:
    """scaled_dot_product_attention's fused kernels off the CPU; on CPU the explicit form is faster."""
    return device.type != "cpu"


def _heads_first(projected: torch.Tensor, start: int, heads: int, slot: int) -> torch.Tensor:
    """Columns [start, start + heads * slot) of [batch, seq, *] as [batch * heads, seq, slot]
    (a view for a single head: batched matmuls read the strided columns in place)."""
    batch, seq, _ = projected.shape
    block = projected[:, :, start:start + heads * slot]
    if heads == 1:
        return block
    return block.view(batch, seq, heads, slot).transpose(1, 2).reshape(batch * heads, seq, slot)


def linear_on_padded(states: torch.Tensor, dense: nn.Linear) -> torch.Tensor:
    """dense(states), where `states` may end with padding columns (they meet zero weights)."""
    weight = dense.weight
    extra = states.shape[-1] - weight.shape[1]
    if extra > 0:
        weight = torch.cat([weight, weight.new_zeros(weight.shape[0], extra)], 1)
    return F.linear(states, weight, dense.bias)


class GrainSelfAttention(nn.Module):
    """Attention over heads of different QK/VO widths.

    Heads of equal widths form a group (`plan_head_groups`) that one batched
    matmul-softmax-matmul serves. Q, K and V of all groups come from one matmul whose weight is
    assembled from the kept rows in group order (`AttentionLayout`), with the attention scale folded
    into the Q rows. On CPU this explicit attention measured faster than the flash kernel of
    `scaled_dot_product_attention` for the narrow heads pruning leaves (batch 32 x 128, one head of
    width 4: 0.39 vs 0.53 ms) and takes different Q/K and V widths; off the CPU the fused kernel is used.
    Heads without QK units attend uniformly: their context is V of the mean (over kept keys) of the
    hidden states, the same at every position (no attention dropout there, the only difference from
    the masked model, and only in training).
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

    def _projection(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the padded fused [Q | K | V] projection (scale folded into Q)."""
        q, k, v = self.query, self.key, self.value
        weight = torch.cat([q.weight * self.scale, k.weight, v.weight, v.weight.new_zeros(1, v.weight.shape[1])])
        bias = torch.cat([q.bias * self.scale, k.bias, v.bias, v.bias.new_zeros(1)])
        rows = self._index("projection_rows", device)
        return weight.index_select(0, rows), bias.index_select(0, rows)

    def _attend(self, query, key, value, bias: torch.Tensor | None, heads: int) -> torch.Tensor:
        """Contexts softmax(QK^T + bias) V, transposed: [batch * heads, slot, seq] from [batch * heads, seq, slot]
        inputs (the scale is already in Q).

        On CPU the context is computed as V^T P^T: MKL runs that product 3-5x faster than P V when V
        is narrow (batch 32 x 128, V of width 9: 0.08 vs 0.28 ms), and the transposed contexts of a
        group's heads stack into the output projection's input without a copy.
        """
        dropout_p = self.dropout_p if self.training else 0.0
        if use_fused_attention(query.device):
            batch_heads, seq, _ = query.shape
            split = lambda t: t.reshape(batch_heads // heads, heads, seq, -1)  # noqa: E731
            mask = None if bias is None else bias[:, None]  # [batch, 1, 1, seq]
            context = F.scaled_dot_product_attention(
                split(query), split(key), split(value), attn_mask=mask, dropout_p=dropout_p, scale=1.0,
            )
            return context.view(batch_heads, seq, -1).transpose(1, 2)
        keys_t = key.transpose(1, 2)
        if bias is None:
            scores = torch.bmm(query, keys_t)
        else:
            scores = torch.baddbmm(bias if heads == 1 else bias.repeat_interleave(heads, 0), query, keys_t)
        probs = F.dropout(torch.softmax(scores, -1), dropout_p, self.training)
        return torch.bmm(value.transpose(1, 2), probs.transpose(1, 2))

    def _output_weight(self, output: nn.Linear) -> torch.Tensor:
        """The output projection's weight, its columns in the order of the groups' contexts."""
        return output.weight.index_select(1, self._index("context_columns", output.weight.device))

    def _uniform_update(self, hidden: torch.Tensor, keys: KeyMask, output: nn.Linear) -> torch.Tensor:
        """[batch, 1, hidden]: what the uniform heads add at every position (V of the mean hidden state)."""
        uniform = self._index("uniform_vo", hidden.device)
        mean = hidden.mean(1) if keys.weights is None else torch.bmm(keys.weights[:, None, :], hidden)[:, 0]
        values = F.linear(mean, self.value.weight.index_select(0, uniform), self.value.bias.index_select(0, uniform))
        return F.linear(values, output.weight.index_select(1, uniform))[:, None, :]

    def forward(self, hidden: torch.Tensor, keys: KeyMask, output: nn.Linear) -> torch.Tensor:
        """The attention block's update before dropout and LayerNorm: the heads' contexts through `output`."""
        batch, seq, hidden_size = hidden.shape
        per_sequence = output.bias[None, None, :]
        if self.layout.uniform_vo:
            per_sequence = per_sequence + self._uniform_update(hidden, keys, output)
        if not self.layout.groups:
            return per_sequence.expand(batch, seq, -1)
        projected = F.linear(hidden, *self._projection(hidden.device))
        contexts, offset = [], 0
        for group in self.layout.groups:
            n, qk, vo = len(group.heads), group.qk_slot, group.vo_slot
            query = _heads_first(projected, offset, n, qk)
            key = _heads_first(projected, offset + n * qk, n, qk)
            value = _heads_first(projected, offset + 2 * n * qk, n, vo)
            contexts.append(self._attend(query, key, value, keys.bias, n).reshape(batch, n * vo, seq))
            offset += group.width
        contexts_t = contexts[0] if len(contexts) == 1 else torch.cat(contexts, dim=1)  # [batch, padded VO, seq]
        weight_t = self._output_weight(output).t().expand(batch, -1, -1)
        return torch.baddbmm(per_sequence.expand(batch, 1, hidden_size), contexts_t.transpose(1, 2), weight_t)


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
        """states: the kept units (trailing extra columns are padding); None when none are kept."""
        # (zeros + bias rather than a broadcast view: dropout then draws per token, as in the masked model)
        update = linear_on_padded(states, self.dense) if hasattr(self, "dense") else torch.zeros_like(residual) + self.bias
        return self.add_and_norm(update, residual)

    def add_and_norm(self, update: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(update) + residual)


class GrainAttention(nn.Module):
    def __init__(self, config: GrainBertConfig, index: int):
        super().__init__()
        self.has_heads = len(config.vo_dims[index]) > 0
        if self.has_heads:
            self.self = GrainSelfAttention(config, index)
        self.output = ResidualOutput(config, sum(config.vo_dims[index]))

    def forward(self, hidden: torch.Tensor, keys: KeyMask) -> torch.Tensor:
        if not self.has_heads:
            return self.output(None, hidden)
        return self.output.add_and_norm(self.self(hidden, keys, self.output.dense), hidden)


class GrainIntermediate(nn.Module):
    """act(dense(x)), its output padded with zero columns to a multiple of 8 (see `round_up`)."""

    def __init__(self, config: GrainBertConfig, width: int):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, width)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]
        self.padded_width = round_up(width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight, bias = self.dense.weight, self.dense.bias
        extra = self.padded_width - weight.shape[0]
        if extra:  # the padding columns meet zero weights in the output dense
            weight = torch.cat([weight, weight.new_zeros(extra, weight.shape[1])])
            bias = torch.cat([bias, bias.new_zeros(extra)])
        return self.intermediate_act_fn(F.linear(hidden, weight, bias))


class GrainLayer(nn.Module):
    def __init__(self, config: GrainBertConfig, index: int):
        super().__init__()
        width = config.ffn_dims[index]
        self.attention = GrainAttention(config, index)
        self.intermediate = GrainIntermediate(config, width) if width > 0 else None
        self.output = ResidualOutput(config, width)

    def forward(self, hidden: torch.Tensor, keys: KeyMask) -> torch.Tensor:
        attended = self.attention(hidden, keys)
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
        keys = KeyMask.of(attention_mask, hidden.dtype)
        states = [hidden]
        for layer in self.encoder.layer:
            hidden = layer(hidden, keys)
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

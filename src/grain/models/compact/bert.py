"""The compact model: a dense BERT holding only the kept units, with heads of different sizes.

Every layer keeps its own list of heads, each with its own QK width and VO width; the attention
scale stays 1/sqrt(original head dim), so the compact model computes exactly what the masked model
does. A head with VO units but no QK units attends uniformly (its scores are all zero). A layer
without VO (or FFN) units keeps only that sub-layer's output bias before the LayerNorm.

This module is the HF architecture (config, parameters, save/load); how the heterogeneous heads
run on a device is a kernel plan in `.kernels` (CPU: one batched attention per head width; GPU: all
heads padded to one width, one fused attention call). Matmul widths are padded to multiples of 8 with
zero weights; the padding is exact and its FLOPs are reported apart (grain.measure.flops).

The files of this package import only torch, transformers and each other (relative imports): they
are the compact model's modeling code whatever runs it. Each family file declares its classes in a
`COMPACT_FAMILY` (`CompactFamily`), which grain's registry (`grain.models.registry`) finds and
registers with the HF Auto classes (`import grain` first), so that
`AutoModelForSequenceClassification.from_pretrained(dir)` loads a saved compact model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.models.bert.modeling_bert import BertEmbeddings, BertPooler, BertPreTrainedModel

from .kernels import (
    DerivedWeights,
    GroupedLayout,
    KeyMask,
    PaddedLayout,
    exported_contexts,
    exporting,
    grouped_contexts,
    padded_contexts,
    round_up,
    use_padded_plan,
    zero_padded,
)


@dataclass(frozen=True)
class CompactFamily:
    """What one family's compact file declares (as `COMPACT_FAMILY`), for grain's registry.

    family: the `grain.architectures` family it compacts ("roberta"); hf_prefixes: the prefixes of the
    HF head classes it replaces ("XLMRoberta" + "ForSequenceClassification"); config / model: its compact
    config and base model classes; heads: its compact head classes, each named <prefix>For<Head>.
    """

    family: str
    hf_prefixes: tuple[str, ...]
    config: type
    model: type
    heads: tuple[type, ...]

    def head_suffixes(self) -> dict[str, type]:
        """Head suffix ("ForSequenceClassification") -> compact head class."""
        return {cls.__name__[cls.__name__.index("For"):]: cls for cls in self.heads}

    def head_classes(self) -> dict[str, type]:
        """HF class name -> compact class, for every HF prefix and the compact classes' own names: the
        heads, and the base model without a head ("BertModel" -> the compact `model`: sentence embeddings)."""
        by_name = {f"{prefix}{suffix}": cls for prefix in self.hf_prefixes for suffix, cls in self.head_suffixes().items()}
        bases = {f"{prefix}Model": self.model for prefix in self.hf_prefixes}
        return {**by_name, **bases, **{cls.__name__: cls for cls in (*self.heads, self.model)}}


class CompactStructure:
    """Config mixin: the kept structure, on top of a family's HF config class.

    qk_dims / vo_dims: per layer, the QK and VO width of every kept head (heads without VO units are
    dropped); ffn_dims: per layer, the number of kept FFN neurons; embedding_rank: rank of the
    factorized word embeddings (None: full).
    """

    def __init__(self, qk_dims=None, vo_dims=None, ffn_dims=None, original_head_dim=None, embedding_rank=None, **kwargs):
        super().__init__(**kwargs)
        layers = self.num_hidden_layers
        head_dim = self.hidden_size // self.num_attention_heads
        self.qk_dims = qk_dims if qk_dims is not None else [[head_dim] * self.num_attention_heads] * layers
        self.vo_dims = vo_dims if vo_dims is not None else [[head_dim] * self.num_attention_heads] * layers
        self.ffn_dims = ffn_dims if ffn_dims is not None else [self.intermediate_size] * layers
        self.original_head_dim = original_head_dim or head_dim
        self.embedding_rank = embedding_rank


class GrainBertConfig(CompactStructure, BertConfig):
    """BertConfig plus the kept structure (`CompactStructure`)."""

    model_type = "grain_bert"
    # in the class's own namespace: HF turns config classes without one into dataclasses with a generated __init__
    __init__ = CompactStructure.__init__


class GrainSelfAttention(nn.Module):
    """Attention over heads of different QK/VO widths (its parameters: the kept rows of W_q, W_k, W_v).

    How the heads run is a kernel plan of `.kernels`, chosen by the device of the
    forward: on CPU one explicit batched attention per distinct (QK, VO) width (`GroupedLayout`), on
    a GPU every head padded to one width and one fused attention call (`PaddedLayout`). Both read a
    fused [Q | K | V] projection assembled from the kept rows, with the attention scale folded into
    the Q rows; outside training (no grad) the assembled weights are kept between forwards.
    """

    # whether heads without QK units are computed apart on the CPU plan (attention over every kept key)
    uniform_apart = True

    def __init__(self, config: GrainBertConfig, index: int):
        super().__init__()
        self.qk_dims, self.vo_dims = list(config.qk_dims[index]), list(config.vo_dims[index])
        bias = getattr(config, "attention_bias", True)  # (ModernBERT's Linears have none by default)
        self.query = nn.Linear(config.hidden_size, sum(self.qk_dims), bias=bias)
        self.key = nn.Linear(config.hidden_size, sum(self.qk_dims), bias=bias)
        self.value = nn.Linear(config.hidden_size, sum(self.vo_dims), bias=bias)
        self.scale = config.original_head_dim ** -0.5
        self.dropout_p = getattr(config, "attention_probs_dropout_prob", getattr(config, "attention_dropout", 0.0))
        self.layout = GroupedLayout.plan(self.qk_dims, self.vo_dims, self.uniform_apart)
        self.padded_layout = PaddedLayout.plan(self.qk_dims, self.vo_dims)
        self._indices: dict = {}  # per device; plain tensors, not buffers (from_pretrained leaves those unset)
        self._derived = DerivedWeights()

    def layout_for(self, device: torch.device) -> GroupedLayout | PaddedLayout:
        return self.padded_layout if use_padded_plan(device) else self.layout

    def _index(self, values: list[int], name: str, device) -> torch.Tensor:
        if (name, device) not in self._indices:
            self._indices[(name, device)] = torch.tensor(values, dtype=torch.long, device=device)
        return self._indices[(name, device)]

    def _projection(self, layout, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight [columns, hidden] and bias (None without biases) of the fused [Q | K | V] projection of
        `layout`."""
        q, k, v = self.query, self.key, self.value

        def build():
            weight = torch.cat([q.weight * self.scale, k.weight, v.weight, v.weight.new_zeros(1, v.weight.shape[1])])
            rows = self._index(layout.projection_rows, f"{type(layout).__name__}.rows", device)
            if v.bias is None:
                return weight.index_select(0, rows), None
            bias = torch.cat([q.bias * self.scale, k.bias, v.bias, v.bias.new_zeros(1)])
            return weight.index_select(0, rows), bias.index_select(0, rows)

        sources = [t for t in (q.weight, q.bias, k.weight, k.bias, v.weight, v.bias) if t is not None]
        return self._derived.get(f"{type(layout).__name__}.projection", sources, build)

    def position(self, projected: torch.Tensor, layout, positions) -> torch.Tensor:
        """The fused projection [batch, seq, columns of `layout`] after the family's position encoding
        of Q and K (`positions`: what the base model passes its layers): nothing in BERT, whose positions
        are embeddings; ModernBERT rotates Q and K here."""
        return projected

    def _output_weight(self, output: nn.Linear, layout) -> torch.Tensor:
        """W_o with its columns in the order of `layout`'s contexts ([hidden, contexts])."""
        weight = output.weight
        if isinstance(layout, PaddedLayout):
            def build():
                padded = zero_padded(weight, 1, dim=1)
                return (padded.index_select(1, self._index(layout.output_columns, "output_columns", weight.device)),)
        else:
            def build():
                return (weight.index_select(1, self._index(layout.context_columns, "context_columns", weight.device)),)
        return self._derived.get(f"{type(layout).__name__}.output", [weight], build)[0]

    def _uniform_update(self, hidden: torch.Tensor, keys: KeyMask, output: nn.Linear) -> torch.Tensor:
        """[batch, 1, hidden]: what the CPU plan's uniform heads add at every position (V of the mean
        hidden state; no attention dropout there, the only difference from the masked model)."""
        uniform = self._index(self.layout.uniform_vo, "uniform_vo", hidden.device)
        mean = hidden.mean(1) if keys.weights is None else torch.bmm(keys.weights[:, None, :], hidden)[:, 0]
        bias = None if self.value.bias is None else self.value.bias.index_select(0, uniform)
        values = F.linear(mean, self.value.weight.index_select(0, uniform), bias)
        return F.linear(values, output.weight.index_select(1, uniform))[:, None, :]

    def forward(self, hidden: torch.Tensor, keys: KeyMask, output: nn.Linear, positions=None) -> torch.Tensor:
        """[batch, seq, hidden] -> the attention block's update before dropout and LayerNorm: the heads'
        contexts through `output` (W_o and its bias); `positions`: see `position`."""
        layout = self.layout_for(hidden.device)
        dropout_p = self.dropout_p if self.training else 0.0
        projected = self.position(F.linear(hidden, *self._projection(layout, hidden.device)), layout, positions)
        if isinstance(layout, PaddedLayout):
            contexts = padded_contexts(projected, layout, keys.bias, dropout_p)
            return F.linear(contexts, self._output_weight(output, layout), output.bias)
        batch, seq, hidden_size = hidden.shape
        per_sequence = output.bias[None, None, :] if output.bias is not None else hidden.new_zeros(1, 1, hidden_size)
        if layout.uniform_vo:
            per_sequence = per_sequence + self._uniform_update(hidden, keys, output)
        if not layout.groups:
            return per_sequence.expand(batch, seq, -1)
        if exporting():  # the same products laid out for an ONNX runtime: see `exported_contexts`
            contexts = exported_contexts(projected, layout, keys.bias, dropout_p, self.training)
            return F.linear(contexts, self._output_weight(output, layout)) + per_sequence
        contexts_t = grouped_contexts(projected, layout, keys.bias, dropout_p, self.training)  # [batch, VO, seq]
        weight_t = self._output_weight(output, layout).t().expand(batch, -1, -1)
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
        self._derived = DerivedWeights()

    def _padded_weight(self, width: int) -> torch.Tensor:
        """dense's weight with zero columns up to `width` inputs (inputs that are padding)."""
        weight = self.dense.weight
        extra = width - weight.shape[1]
        if extra <= 0:
            return weight
        return self._derived.get(
            "weight", [weight], lambda: (zero_padded(weight, extra, dim=1),)
        )[0]

    def forward(self, states: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
        """states: [batch, seq, kept units (+ trailing padding columns)]; None when none are kept."""
        if hasattr(self, "dense"):
            update = F.linear(states, self._padded_weight(states.shape[-1]), self.dense.bias)
        else:
            # (zeros + bias rather than a broadcast view: dropout then draws per token, as in the masked model)
            update = torch.zeros_like(residual) + self.bias
        return self.add_and_norm(update, residual)

    def add_and_norm(self, update: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(update) + residual)


class GrainAttention(nn.Module):
    """The attention sub-layer of layer `index`: its heads (`self_attention_class`, absent when no head
    keeps VO units) and the output projection with residual and LayerNorm."""

    self_attention_class = GrainSelfAttention

    def __init__(self, config: GrainBertConfig, index: int):
        super().__init__()
        self.has_heads = len(config.vo_dims[index]) > 0
        if self.has_heads:
            self.self = self.self_attention_class(config, index)
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
        self._derived = DerivedWeights()

    def _padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = self.dense.weight, self.dense.bias
        extra = self.padded_width - weight.shape[0]
        if not extra:
            return weight, bias
        # the padding columns meet zero weights in the output dense (act(0) = 0 is not needed)
        return self._derived.get("padded", [weight, bias], lambda: (
            zero_padded(weight, extra), zero_padded(bias, extra),
        ))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[batch, seq, hidden] -> [batch, seq, padded_width]."""
        return self.intermediate_act_fn(F.linear(hidden, *self._padded()))


class GrainLayer(nn.Module):
    """Layer `index`: the attention sub-layer (`attention_class`), then the FFN (absent when it keeps no
    neuron: its output bias, residual and LayerNorm remain)."""

    attention_class = GrainAttention

    def __init__(self, config: GrainBertConfig, index: int):
        super().__init__()
        width = config.ffn_dims[index]
        self.attention = self.attention_class(config, index)
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


def factorize_word_embeddings(model: nn.Module) -> None:
    """Where `model.config.embedding_rank` is set, its word embeddings (found by get/set_input_embeddings)
    become a FactorizedEmbedding of that rank, in place: how a compact model whose embeddings were
    factorized (student.embedding_rank / compact.embedding_rank) is built before its weights load."""
    config = model.config
    if config.embedding_rank:
        words = model.get_input_embeddings()
        model.set_input_embeddings(
            FactorizedEmbedding(config.vocab_size, config.embedding_rank, words.embedding_dim, config.pad_token_id)
        )


class GrainBertPreTrainedModel(BertPreTrainedModel):
    """Base of every compact model, whatever its family: the other families' compact classes
    (`.roberta`, ...) subclass these BERT ones, keeping the layers and swapping the
    embeddings, the config class and the sequence-classification head."""

    config_class = GrainBertConfig
    base_model_prefix = "bert"
    _input_embed_layer = "word_embeddings"  # HF's get/set_input_embeddings: <base>.embeddings.word_embeddings
    _can_record_outputs = {}  # hidden states are returned by GrainBertModel itself

    def _init_weights(self, module):
        super()._init_weights(module)
        # the position / token type id buffers of other families' embeddings (BERT's are set above)
        positions = getattr(module, "position_ids", None)
        if isinstance(positions, torch.Tensor) and not isinstance(module, BertEmbeddings):
            init.copy_(positions, torch.arange(positions.shape[-1], device=positions.device).expand_as(positions))
            if isinstance(getattr(module, "token_type_ids", None), torch.Tensor):
                init.zeros_(module.token_type_ids)


class GrainBertModel(GrainBertPreTrainedModel):
    """Embeddings, the compact layers and (BERT) a pooler. Families change `embeddings_class`,
    `has_pooler`, `encoder_name` (the layers live at `<encoder_name>.layer`, as in the family's HF
    model) and, for what runs between the embeddings and layer 0, `embed`."""

    embeddings_class = BertEmbeddings
    has_pooler = True
    encoder_name = "encoder"

    def __init__(self, config: GrainBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.build_embeddings(config)
        factorize_word_embeddings(self)
        encoder = nn.Module()
        encoder.layer = nn.ModuleList(GrainLayer(config, i) for i in range(config.num_hidden_layers))
        self.add_module(self.encoder_name, encoder)
        self.pooler = BertPooler(config) if add_pooling_layer and self.has_pooler else None
        self.post_init()

    def build_embeddings(self, config) -> None:
        """The modules before layer 0, named as in the family's HF model (their weights copy by name)."""
        self.embeddings = self.embeddings_class(config)

    def embed(self, input_ids, token_type_ids, position_ids) -> torch.Tensor:
        """[batch, seq] ids -> [batch, seq, hidden], the input of layer 0."""
        return self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        hidden = self.embed(input_ids, token_type_ids, position_ids)
        keys = KeyMask.of(attention_mask, hidden.dtype)
        states = [hidden]
        for layer in getattr(self, self.encoder_name).layer:
            hidden = layer(hidden, keys)
            states.append(hidden)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden, pooler_output=pooled,
            hidden_states=tuple(states) if output_hidden_states else None,
        )

    def sublayers(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Layer 0's attention and FFN sub-layers as calls on `hidden` [batch, seq, hidden] (each with its
        residual and LayerNorm), for timing them apart (`grain.measure.latency_model`)."""
        layer = getattr(self, self.encoder_name).layer[0]
        keys = KeyMask.of(attention_mask, hidden.dtype)
        if layer.intermediate is None:
            return (lambda: layer.attention(hidden, keys)), (lambda: layer.output(None, hidden))
        return (lambda: layer.attention(hidden, keys)), (lambda: layer.output(layer.intermediate(hidden), hidden))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor | None, num_labels: int,
                        problem_type: str | None = None) -> torch.Tensor | None:
    """As transformers' sequence classification heads: binary cross-entropy per logit for the
    multi_label_classification problem type (a reranker's one logit), MSE for one label (regression),
    cross-entropy otherwise; None without labels."""
    if labels is None:
        return None
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.float().view_as(logits))
    if num_labels == 1:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))


class Classifier:
    """The forward of the classification heads (a mixin, first among the bases): the base model's
    outputs, the head's `logits(outputs)`, its `loss(logits, labels)` and output (`output_class`)."""

    output_class = SequenceClassifierOutput

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, output_hidden_states=False,
                **kwargs):
        outputs = self.base_model(input_ids, attention_mask, token_type_ids, output_hidden_states=output_hidden_states)
        logits = self.logits(outputs)
        return self.output_class(loss=self.loss(logits, labels), logits=logits, hidden_states=outputs.hidden_states)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        return classification_loss(logits, labels, self.num_labels, self.config.problem_type)


class GrainBertForSequenceClassification(Classifier, GrainBertPreTrainedModel):
    base_model_class = GrainBertModel

    def __init__(self, config: GrainBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, self.base_model_class(config))
        self.dropout = nn.Dropout(config.classifier_dropout or config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def logits(self, outputs) -> torch.Tensor:
        return self.classifier(self.dropout(outputs.pooler_output))


class TokenHead(GrainBertPreTrainedModel):
    """Base of the heads that read every position's final hidden state: the base model without a pooler."""

    base_model_class = GrainBertModel

    def __init__(self, config: GrainBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, self.base_model_class(config, add_pooling_layer=False))


class FirstTokenClassification(Classifier, TokenHead):
    """Sequence classification of families without a pooler: `head_class` (the family's HF head
    module, e.g. RobertaClassificationHead) reads the first token's final hidden state."""

    head_class = None

    def __init__(self, config: GrainBertConfig):
        super().__init__(config)
        self.classifier = self.head_class(config)
        self.post_init()

    def logits(self, outputs) -> torch.Tensor:
        return self.classifier(outputs.last_hidden_state)


class GrainBertForTokenClassification(Classifier, TokenHead):
    output_class = TokenClassifierOutput

    def __init__(self, config: GrainBertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.classifier_dropout or config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def logits(self, outputs) -> torch.Tensor:
        return self.classifier(self.dropout(outputs.last_hidden_state))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        return None if labels is None else F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))


class GrainBertForQuestionAnswering(TokenHead):
    def __init__(self, config: GrainBertConfig):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, start_positions=None, end_positions=None,
        output_hidden_states=False, **kwargs,
    ):
        outputs = self.base_model(input_ids, attention_mask, token_type_ids, output_hidden_states=output_hidden_states)
        return self.answer(outputs.last_hidden_state, start_positions, end_positions, outputs.hidden_states)

    def span_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[batch, seq, hidden] final hidden states -> [batch, seq, 2] start and end logits."""
        return self.qa_outputs(hidden)

    def answer(self, hidden, start_positions, end_positions, hidden_states) -> QuestionAnsweringModelOutput:
        """Start/end logits of the final hidden states [batch, seq, hidden], and their loss."""
        start_logits, end_logits = self.span_logits(hidden).split(1, dim=-1)
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
            loss=loss, start_logits=start_logits, end_logits=end_logits, hidden_states=hidden_states
        )


COMPACT_FAMILY = CompactFamily(
    "bert", ("Bert",), GrainBertConfig, GrainBertModel,
    (GrainBertForSequenceClassification, GrainBertForTokenClassification, GrainBertForQuestionAnswering),
)

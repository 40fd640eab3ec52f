"""Tiny random models and their inputs: the one model builder (`tiny_model`), the one token-batch
builder (`token_batch`), unit masks (all kept; random with every corner case), a masked model's
outputs, and the half-FFN compact model the benchmark tests time."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    CamembertConfig,
    CamembertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForQuestionAnswering,
    DebertaV2ForSequenceClassification,
    DebertaV2ForTokenClassification,
    DistilBertConfig,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    ElectraConfig,
    ElectraForQuestionAnswering,
    ElectraForSequenceClassification,
    ElectraForTokenClassification,
    ModernBertConfig,
    ModernBertForQuestionAnswering,
    ModernBertForSequenceClassification,
    ModernBertForTokenClassification,
    RobertaConfig,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from grain.models.masks import EncoderShape, attach_mask_hooks
from grain.models.slicing import compact_from_masked

# family -> (config class, the family's own settings, {head kind: HF class}). RoBERTa as its checkpoints
# are: padding id 1 (positions from 2), one token type; ELECTRA with embeddings narrower than the encoder
# (embeddings_project); DistilBERT under its own config names, without token types; DeBERTa-v3-like
# (disentangled attention with c2p and p2c through the shared W_Q/W_K, log-bucketed positions, no token
# types); ModernBERT with a sliding window of 2 positions each side (local_attention 4) in layers 0 and 2,
# so that the 12-token test batches reach past it, global attention in layer 1, no biases.
ROBERTA_LIKE = dict(max_position_embeddings=66, pad_token_id=1, type_vocab_size=1)
FAMILIES = {
    "bert": (
        BertConfig, dict(max_position_embeddings=64),
        {"sequence": BertForSequenceClassification, "token": BertForTokenClassification, "qa": BertForQuestionAnswering},
    ),
    "roberta": (
        RobertaConfig, ROBERTA_LIKE,
        {"sequence": RobertaForSequenceClassification, "token": RobertaForTokenClassification,
         "qa": RobertaForQuestionAnswering},
    ),
    "xlm-roberta": (XLMRobertaConfig, ROBERTA_LIKE, {"sequence": XLMRobertaForSequenceClassification}),
    "camembert": (CamembertConfig, ROBERTA_LIKE, {"sequence": CamembertForSequenceClassification}),
    "electra": (
        ElectraConfig, dict(embedding_size=16, max_position_embeddings=64),
        {"sequence": ElectraForSequenceClassification, "token": ElectraForTokenClassification,
         "qa": ElectraForQuestionAnswering},
    ),
    "distilbert": (
        DistilBertConfig, dict(max_position_embeddings=64),
        {"sequence": DistilBertForSequenceClassification, "token": DistilBertForTokenClassification,
         "qa": DistilBertForQuestionAnswering},
    ),
    "deberta-v2": (
        DebertaV2Config,
        dict(max_position_embeddings=64, relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=True,
             position_buckets=8, norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0),
        {"sequence": DebertaV2ForSequenceClassification, "token": DebertaV2ForTokenClassification,
         "qa": DebertaV2ForQuestionAnswering},
    ),
    "modernbert": (
        ModernBertConfig,
        dict(max_position_embeddings=64, local_attention=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
             cls_token_id=1, sep_token_id=2,
             layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
        {"sequence": ModernBertForSequenceClassification, "token": ModernBertForTokenClassification,
         "qa": ModernBertForQuestionAnswering},
    ),
}
# Each family's dropout settings, when tiny_model is given one probability for all.
DROPOUTS = {
    "distilbert": ("dropout", "attention_dropout"),
    "modernbert": ("embedding_dropout", "attention_dropout", "mlp_dropout"),
}
# grain.measure.flops.dummy_inputs (the benchmarks' inputs) draws token ids from 1000 up
BENCH_VOCAB = 1200
BENCH_BATCH, BENCH_SEQ = 2, 16


def tiny_model(family: str = "bert", head="sequence", *, layers: int = 3, hidden: int = 32, heads: int = 4,
               ffn: int = 48, vocab: int = 100, labels: int | None = None, dropout: float | None = None,
               initializer_range: float | None = None, seed: int | None = 0, **config):
    """A random encoder of `family` (a key of FAMILIES) with a `head` ("sequence", "token", "qa", or an
    HF model class), in eval mode.

    layers/hidden/heads/ffn/vocab: its sizes; labels: 2 for "qa" (start and end), else 3 unless given;
    dropout: both dropout probabilities (the config's default if None); initializer_range: the weights'
    spread (the config's default, 0.02, if None); seed: torch's seed before the weights are drawn (None:
    not reseeded); config: any other config setting, over the family's own.
    """
    config_class, family_settings, heads_of = FAMILIES[family]
    if family == "distilbert":
        sizes = dict(dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=ffn)
    else:
        sizes = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn)
    dropouts = dict.fromkeys(DROPOUTS.get(family, ("hidden_dropout_prob", "attention_probs_dropout_prob")), dropout)
    family_settings = dict(family_settings)
    if "layer_types" in family_settings:  # one per layer, cycling
        family_settings["layer_types"] = [family_settings["layer_types"][i % 3] for i in range(layers)]
    settings = {**family_settings, **sizes, "vocab_size": vocab, **config}
    if dropout is not None:
        settings.update(dropouts)
    if initializer_range is not None:
        settings["initializer_range"] = initializer_range
    settings["num_labels"] = labels if labels is not None else (2 if head == "qa" else 3)
    model_class = heads_of[head] if isinstance(head, str) else head
    if seed is not None:
        torch.manual_seed(seed)
    return model_class(config_class(**settings)).eval()


def token_batch(size: tuple[int, int] = (4, 12), *, seed: int = 5, lengths=(12, 8, 12, 3), low: int = 1,
                high: int = 100, ids: torch.Tensor | None = None, pad_id: int | None = None,
                token_types: str | None = "zeros") -> dict:
    """{"input_ids", "attention_mask"[, "token_type_ids"]}: token ids of `size` [batch, seq] drawn from
    [low, high) by a generator seeded `seed` (or the given `ids`), each row's first `lengths[row]` tokens
    attended (None: all), padding set to `pad_id` where given; token types: "zeros", "halves" (the second
    half of each row is segment 1) or None (left out). By default the compaction tests' batch: 4 rows of
    12 tokens, rows 1 and 3 padded after 8 and 3 tokens, token types 0."""
    if ids is None:
        ids = torch.randint(low, high, size, generator=torch.Generator().manual_seed(seed))
    rows, seq = ids.shape
    lengths = [seq] * rows if lengths is None else lengths
    attention = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    if pad_id is not None:
        ids[attention == 0] = pad_id
    batch = {"input_ids": ids, "attention_mask": attention}
    if token_types == "zeros":
        batch["token_type_ids"] = torch.zeros_like(ids)
    elif token_types == "halves":
        batch["token_type_ids"] = (torch.arange(seq) >= seq // 2).long().expand(rows, -1).clone()
    elif token_types is not None:
        raise ValueError(f"token_types={token_types!r}")
    return batch


def all_kept_masks(shape: EncoderShape) -> dict[str, torch.Tensor]:
    """Masks keeping every unit of an EncoderShape."""
    return {kind: torch.ones(shape.num_layers, size) for kind, size in shape.units_per_layer.items()}


def hard_masks(shape: EncoderShape, seed=0) -> dict[str, torch.Tensor]:
    """Random masks (of a 3-layer shape) plus the corner cases: empty heads, an empty MHA layer, an empty
    FFN layer, a head with VO units but no QK units, a head with one QK unit (one rotary pair under RoPE)."""
    g = torch.Generator().manual_seed(seed)
    units = shape.units_per_layer
    masks = {
        "qk": (torch.rand(shape.num_layers, units["qk"], generator=g) < 0.5).float(),
        "vo": (torch.rand(shape.num_layers, shape.hidden_size, generator=g) < 0.5).float(),
        "ffn": (torch.rand(shape.num_layers, shape.intermediate_size, generator=g) < 0.4).float(),
    }
    d, q = shape.head_dim, shape.qk_units_per_head
    masks["vo"][0, :d] = 0          # layer 0, head 0 gone
    masks["qk"][0, :q] = 0
    masks["qk"][0, q : 2 * q] = 0   # layer 0, head 1 keeps VO but no QK: uniform attention
    masks["vo"][0, d] = 1
    masks["vo"][1] = 0              # layer 1: no attention at all
    masks["qk"][1] = 0
    masks["ffn"][2] = 0             # layer 2: no FFN at all
    masks["qk"][2, :q] = 0          # layer 2, head 0: one QK unit (a width of 1 is padded to 2 in the compact model)
    masks["qk"][2, 0] = masks["vo"][2, 0] = 1
    return masks


def masked_outputs(model, masks, inputs):
    """The model's outputs under `masks` (hooks attached for the forward only), without gradients."""
    handles = attach_mask_hooks(model, lambda layer, kind: masks[kind][layer])
    with torch.no_grad():
        out = model(**inputs)
    for handle in handles:
        handle.remove()
    return out


def half_ffn_compact(dense):
    """The compact form of `dense` with the first half of every layer's FFN neurons pruned."""
    shape = EncoderShape.of(dense)
    masks = all_kept_masks(shape)
    masks["ffn"][:, : shape.intermediate_size // 2] = 0
    return compact_from_masked(dense, masks)[0]

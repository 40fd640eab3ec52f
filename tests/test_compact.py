"""The compact model equals the masked model, has exactly the kept parameters, and round-trips."""

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)

import grain  # noqa: F401  (registers the compact classes with the Auto classes)
from grain.models.compact.kernels import GroupedLayout
from grain.models.masks import EncoderShape, attach_mask_hooks
from grain.models.slicing import compact_from_masked, factorized_copy
from grain.pruning.ranking import kept_linear_params
from tests.conftest import all_kept_masks


def tiny(cls, layers=3):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, num_labels=2 if cls is BertForQuestionAnswering else 3,
    )
    return cls(config).eval()


def hard_masks(shape: EncoderShape, seed=0):
    """Random masks plus the corner cases: empty heads, an empty MHA layer, an empty FFN layer,
    a head with VO units but no QK units."""
    g = torch.Generator().manual_seed(seed)
    masks = {
        "qk": (torch.rand(shape.num_layers, shape.hidden_size, generator=g) < 0.5).float(),
        "vo": (torch.rand(shape.num_layers, shape.hidden_size, generator=g) < 0.5).float(),
        "ffn": (torch.rand(shape.num_layers, shape.intermediate_size, generator=g) < 0.4).float(),
    }
    d = shape.head_dim
    masks["vo"][0, :d] = 0          # layer 0, head 0 gone
    masks["qk"][0, :d] = 0
    masks["qk"][0, d : 2 * d] = 0   # layer 0, head 1 keeps VO but no QK: uniform attention
    masks["vo"][0, d] = 1
    masks["vo"][1] = 0              # layer 1: no attention at all
    masks["qk"][1] = 0
    masks["ffn"][2] = 0             # layer 2: no FFN at all
    masks["qk"][2, :d] = 0          # layer 2, head 0: a QK width of 1 (padded to 2 in the compact model)
    masks["qk"][2, 0] = masks["vo"][2, 0] = 1
    return masks


def batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 100, (4, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 8:] = 0
    attention[3, 3:] = 0
    return {"input_ids": ids, "attention_mask": attention, "token_type_ids": torch.zeros_like(ids)}


def masked_outputs(model, masks, inputs):
    handles = attach_mask_hooks(model, lambda layer, kind: masks[kind][layer])
    with torch.no_grad():
        out = model(**inputs)
    for handle in handles:
        handle.remove()
    return out


@pytest.mark.parametrize("cls,field", [
    (BertForSequenceClassification, "logits"),
    (BertForTokenClassification, "logits"),
    (BertForQuestionAnswering, "start_logits"),
    (BertForQuestionAnswering, "end_logits"),
])
def test_compact_equals_masked(cls, field):
    model = tiny(cls)
    shape = EncoderShape.of(model)
    masks = hard_masks(shape)
    inputs = batch()
    expected = getattr(masked_outputs(model, masks, inputs), field)
    compact, _ = compact_from_masked(model, masks)
    with torch.no_grad():
        got = getattr(compact.eval()(**inputs), field)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compact_has_exactly_the_kept_parameters(seed):
    model = tiny(BertForSequenceClassification)
    shape = EncoderShape.of(model)
    masks = hard_masks(shape, seed)
    masks["qk"] *= masks["vo"].view(shape.num_layers, shape.num_heads, -1).amax(-1).repeat_interleave(shape.head_dim, 1)
    compact, _ = compact_from_masked(model, masks)
    encoder_params = sum(p.numel() for n, p in compact.named_parameters() if ".encoder.layer." in n and "LayerNorm" not in n)
    assert encoder_params == kept_linear_params(masks, shape)
    non_encoder = sum(p.numel() for n, p in model.named_parameters() if ".encoder." not in n)
    assert non_encoder == sum(p.numel() for n, p in compact.named_parameters() if ".encoder." not in n)


def test_save_and_load_through_auto_class(tmp_path):
    model = tiny(BertForSequenceClassification)
    masks = hard_masks(EncoderShape.of(model))
    compact, _ = compact_from_masked(model, masks)
    compact.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "GrainBertForSequenceClassification"
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, compact.eval()(**inputs).logits, atol=0, rtol=0)


def test_factorized_embeddings_are_close_and_smaller():
    model = tiny(BertForSequenceClassification)
    masks = {k: torch.ones_like(v) for k, v in hard_masks(EncoderShape.of(model)).items()}
    full, _ = compact_from_masked(model, masks)
    factorized = factorized_copy(full, 32)  # full rank: exact up to float error
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(factorized.eval()(**inputs).logits, full.eval()(**inputs).logits, atol=1e-4, rtol=0)
    low = factorized_copy(full, 8)
    assert low.config.embedding_rank == 8 and full.config.embedding_rank is None
    assert sum(p.numel() for p in low.parameters()) < sum(p.numel() for p in full.parameters())


def test_unpruned_model_needs_no_padding_and_equals_the_original():
    model = tiny(BertForSequenceClassification)
    shape = EncoderShape.of(model)
    compact, _ = compact_from_masked(model, all_kept_masks(shape))
    layout = compact.bert.encoder.layer[0].attention.self.layout
    assert [(g.heads, g.qk_slot, g.vo_slot) for g in layout.groups] == [((0, 1, 2, 3), 8, 8)]
    assert layout.projection_rows == list(range(3 * 32)) and layout.context_columns == list(range(32))
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(compact.eval()(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)


def test_layout_groups_heads_by_width():
    # heads: 0 (qk 3, vo 2), 1 (qk 1, vo 3), 2 (VO only, 2), 3 (qk 3, vo 2), 4 (qk 2, no VO)
    layout = GroupedLayout.plan([3, 1, 0, 3, 2], [2, 3, 2, 2, 0])
    assert [(g.heads, g.qk_slot, g.vo_slot) for g in layout.groups] == [((0, 3), 3, 2), ((1,), 2, 3)]
    zero = 2 * 9 + 9  # the zero row after [W_q (9) | W_k (9) | W_v (9)]
    q, k, v = 0, 9, 18
    assert layout.projection_rows == (
        [q + 0, q + 1, q + 2, q + 4, q + 5, q + 6] + [k + 0, k + 1, k + 2, k + 4, k + 5, k + 6]  # heads 0 and 3
        + [v + 0, v + 1, v + 7, v + 8]
        + [q + 3, zero, k + 3, zero, v + 2, v + 3, v + 4]  # head 1: QK width 1 padded to 2
        + [zero]  # up to a multiple of 8
    )
    assert layout.context_columns == [0, 1, 7, 8, 2, 3, 4]
    assert layout.uniform_vo == [5, 6]
    assert (layout.padding_columns, layout.padded_qk) == (3, 1)  # head 1's Q and K column, one to reach 24

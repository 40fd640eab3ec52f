"""The compact model equals the masked model, has exactly the kept parameters, and round-trips."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import grain  # noqa: F401  (registers the compact classes with the Auto classes)
from grain.models.compact.kernels import GroupedLayout
from grain.models.masks import EncoderShape
from grain.models.slicing import compact_from_masked, factorized_copy
from grain.pruning.ranking import kept_linear_params
from tests.helpers.models import all_kept_masks, hard_masks, masked_outputs, tiny_model, token_batch


@pytest.mark.parametrize("head,field", [
    ("sequence", "logits"), ("token", "logits"), ("qa", "start_logits"), ("qa", "end_logits"),
])
def test_compact_equals_masked(head, field):
    model = tiny_model(head=head)
    shape = EncoderShape.of(model)
    masks = hard_masks(shape)
    inputs = token_batch()
    expected = getattr(masked_outputs(model, masks, inputs), field)
    compact, _ = compact_from_masked(model, masks)
    with torch.no_grad():
        got = getattr(compact.eval()(**inputs), field)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compact_has_exactly_the_kept_parameters(seed):
    model = tiny_model()
    shape = EncoderShape.of(model)
    masks = hard_masks(shape, seed)
    masks["qk"] *= masks["vo"].view(shape.num_layers, shape.num_heads, -1).amax(-1).repeat_interleave(shape.head_dim, 1)
    compact, _ = compact_from_masked(model, masks)
    encoder_params = sum(p.numel() for n, p in compact.named_parameters() if ".encoder.layer." in n and "LayerNorm" not in n)
    assert encoder_params == kept_linear_params(masks, shape)
    non_encoder = sum(p.numel() for n, p in model.named_parameters() if ".encoder." not in n)
    assert non_encoder == sum(p.numel() for n, p in compact.named_parameters() if ".encoder." not in n)


def test_save_and_load_through_auto_class(tmp_path):
    model = tiny_model()
    masks = hard_masks(EncoderShape.of(model))
    compact, _ = compact_from_masked(model, masks)
    compact.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "GrainBertForSequenceClassification"
    inputs = token_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, compact.eval()(**inputs).logits, atol=0, rtol=0)


def test_factorized_embeddings_are_close_and_smaller():
    model = tiny_model()
    masks = {k: torch.ones_like(v) for k, v in hard_masks(EncoderShape.of(model)).items()}
    full, _ = compact_from_masked(model, masks)
    factorized = factorized_copy(full, 32)  # full rank: exact up to float error
    inputs = token_batch()
    with torch.no_grad():
        torch.testing.assert_close(factorized.eval()(**inputs).logits, full.eval()(**inputs).logits, atol=1e-4, rtol=0)
    low = factorized_copy(full, 8)
    assert low.config.embedding_rank == 8 and full.config.embedding_rank is None
    assert sum(p.numel() for p in low.parameters()) < sum(p.numel() for p in full.parameters())


def test_unpruned_model_needs_no_padding_and_equals_the_original():
    model = tiny_model()
    shape = EncoderShape.of(model)
    compact, _ = compact_from_masked(model, all_kept_masks(shape))
    layout = compact.bert.encoder.layer[0].attention.self.layout
    assert [(g.heads, g.qk_slot, g.vo_slot) for g in layout.groups] == [((0, 1, 2, 3), 8, 8)]
    assert layout.projection_rows == list(range(3 * 32)) and layout.context_columns == list(range(32))
    inputs = token_batch()
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

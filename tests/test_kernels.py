"""Kernel plans of the compact attention: the GPU plan's padding, exactness on both plans, weights
kept between forwards only while they are current, and a forward with no host sync (compiles whole)."""

import pytest
import torch

import grain  # noqa: F401
from grain.measure.flops import count_flops, padding_flops
from grain.models.compact import bert as compact_module
from grain.models.compact.kernels import KeyMask, PaddedLayout
from grain.models.masks import EncoderShape
from grain.models.slicing import compact_from_masked
from tests.helpers.models import BENCH_VOCAB, hard_masks, masked_outputs, tiny_model, token_batch


@pytest.fixture(params=["grouped", "padded"])
def plan(request, monkeypatch):
    """Run the test under the CPU plan and under the GPU plan (forced on CPU)."""
    monkeypatch.setattr(compact_module, "use_padded_plan", lambda device: request.param == "padded")
    return request.param


def test_padded_layout_pads_every_head_to_one_width():
    # heads: 0 (qk 3, vo 2), 1 (qk 0, vo 3: uniform), 2 (qk 9, vo 1)
    layout = PaddedLayout.plan([3, 0, 9], [2, 3, 1])
    assert [(b.heads, b.width) for b in layout.buckets] == [((0, 1, 2), 16)]
    zero = 2 * 12 + 6  # the zero row after [W_q (12) | W_k (12) | W_v (6)]
    pad = lambda kept, w=16: kept + [zero] * (w - len(kept))  # noqa: E731
    q, k, v = 0, 12, 24
    assert layout.projection_rows == (
        pad([q, q + 1, q + 2]) + pad([]) + pad(list(range(q + 3, q + 12)))
        + pad([k, k + 1, k + 2]) + pad([]) + pad(list(range(k + 3, k + 12)))
        + pad([v, v + 1]) + pad([v + 2, v + 3, v + 4]) + pad([v + 5])
    )
    zero_col = 6
    assert layout.output_columns == (
        [0, 1] + [zero_col] * 14 + [2, 3, 4] + [zero_col] * 13 + [5] + [zero_col] * 15
    )
    assert (layout.padded_qk, layout.padded_vo) == (3 * 16 - 12, 3 * 16 - 6)


def test_padded_layout_splits_by_width_only_when_one_call_wastes_too_much():
    # 8 heads of width 8 and one of 64: one call would do 9 * 64 = 576 head-columns of work, 4.5x the 128
    layout = PaddedLayout.plan([8] * 8 + [64], [8] * 8 + [64])
    assert [(len(b.heads), b.width) for b in layout.buckets] == [(1, 64), (8, 8)]
    # 2 heads of 24 and one of 32: 96 vs 80, one call
    layout = PaddedLayout.plan([24, 24, 30], [20, 24, 32])
    assert [(b.heads, b.width) for b in layout.buckets] == [((0, 1, 2), 32)]


def test_both_plans_equal_the_masked_model_and_count_the_same_kept_flops(plan):
    model = tiny_model()  # 3 layers (the corner-case masks fit), its embeddings grown to the benchmarks' token ids
    model.resize_token_embeddings(BENCH_VOCAB)
    masks = hard_masks(EncoderShape.of(model))
    inputs = token_batch()
    expected = masked_outputs(model, masks, inputs).logits
    compact, _ = compact_from_masked(model, masks)
    with torch.no_grad():
        torch.testing.assert_close(compact.eval()(**inputs).logits, expected, atol=1e-5, rtol=0)
    kept = count_flops(compact, 2, 16) - padding_flops(compact, 2, 16)
    reference_plan = compact_module.use_padded_plan
    compact_module.use_padded_plan = lambda device: plan == "grouped"  # the other plan
    try:
        other_kept = count_flops(compact, 2, 16) - padding_flops(compact, 2, 16)
    finally:
        compact_module.use_padded_plan = reference_plan
    # Uniform heads (VO units, no QK units): the CPU plan computes V and W_o once per sequence (of the
    # mean hidden state), the GPU plan per token through the attention; nothing else differs.
    b, s, h = 2, 16, 32
    uniform = sum(
        len(layer.attention.self.layout.uniform_vo) for layer in compact.bert.encoder.layer if layer.attention.has_heads
    )
    assert uniform > 0
    per_token = uniform * (2 * b * s * h + 2 * b * s * s + 2 * b * s * h)
    per_sequence = uniform * (2 * b * h + 2 * b * h)
    grouped, padded = (kept, other_kept) if plan == "grouped" else (other_kept, kept)
    assert padded - grouped == per_token - per_sequence


def test_kept_weights_follow_changed_parameters(plan):
    """Inference keeps the fused weights between forwards; a changed parameter rebuilds them."""
    model = tiny_model()
    compact, _ = compact_from_masked(model, hard_masks(EncoderShape.of(model)))
    compact.eval()
    inputs = token_batch()
    with torch.inference_mode():
        before = compact(**inputs).logits
    with torch.no_grad():
        for layer in compact.bert.encoder.layer:
            if layer.attention.has_heads:
                layer.attention.self.query.weight.mul_(3.0)
                layer.attention.self.value.bias.add_(0.5)
            if layer.intermediate is not None:
                layer.intermediate.dense.weight.mul_(-1.0)
    fresh, _ = compact_from_masked(model, hard_masks(EncoderShape.of(model)))
    fresh.load_state_dict(compact.state_dict())
    with torch.inference_mode():
        after = compact(**inputs).logits
        expected = fresh.eval()(**inputs).logits
    assert (after - before).abs().max() > 1e-4  # 100x the tolerance below: a stale weight would show
    torch.testing.assert_close(after, expected, atol=1e-6, rtol=0)


def test_training_reaches_every_parameter(plan):
    model = tiny_model()
    compact, _ = compact_from_masked(model, hard_masks(EncoderShape.of(model)))
    compact.train()
    compact(**token_batch()).logits.sum().backward()
    layer = compact.bert.encoder.layer[2]
    for param in (layer.attention.self.query.weight, layer.attention.self.value.weight,
                  layer.attention.output.dense.weight, compact.bert.encoder.layer[0].intermediate.dense.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_forward_compiles_whole_and_keeps_the_attention_mask(plan):
    """No host sync in the forward: torch.compile(fullgraph=True) captures it, and a graph traced on an
    unpadded batch still applies the attention mask to a padded one (the old all-ones shortcut did not)."""
    model = tiny_model()
    masks = hard_masks(EncoderShape.of(model))
    compact, _ = compact_from_masked(model, masks)
    compact.eval()
    padded = token_batch()
    unpadded = {**padded, "attention_mask": torch.ones_like(padded["attention_mask"])}
    torch._dynamo.reset()
    compiled = torch.compile(compact, fullgraph=True, backend="aot_eager", dynamic=False)
    with torch.no_grad():
        compiled(**unpadded)
        got = compiled(**padded).logits
    torch.testing.assert_close(got, masked_outputs(model, masks, padded).logits, atol=1e-5, rtol=0)


def test_key_mask_reads_the_mask_on_the_host_only_in_eager_cpu_runs():
    ones = torch.ones(2, 5, dtype=torch.long)
    assert KeyMask.of(ones, torch.float32).bias is None  # eager CPU: the shortcut is free

    def under_compile(mask):
        return KeyMask.of(mask, torch.float32).bias

    bias = torch.compile(under_compile, fullgraph=True, backend="eager")(ones)
    assert bias is not None and bias.shape == (2, 1, 5) and bias.abs().max() == 0


def test_bf16_compact_is_close_to_the_fp32_masked_model(plan):
    """Serving dtype on GPU: bf16. Stated tolerance: last hidden states (LayerNorm outputs, O(1)) within
    0.1 of the fp32 masked model's, mean difference under 0.02 (bf16 keeps 8 bits of mantissa)."""
    model = tiny_model()
    masks = hard_masks(EncoderShape.of(model))
    inputs = {**token_batch(), "output_hidden_states": True}
    expected = masked_outputs(model, masks, inputs).hidden_states[-1]
    compact, _ = compact_from_masked(model, masks)
    with torch.no_grad():
        got = compact.eval().to(torch.bfloat16)(**inputs).hidden_states[-1].float()
    difference = (got - expected).abs()
    assert expected.abs().max() > 1.0
    assert difference.max() <= 0.1 and difference.mean() <= 0.02, (difference.max(), difference.mean())

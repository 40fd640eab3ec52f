"""ModernBERT's own parts (grain.architectures.modernbert, grain.models.compact.modernbert): rotary QK
pairs, sliding-window and global layers, gated FFN units, and the tiny runs on the issue's three tasks.
What every family shares (compact == masked on both plans, save/load, export, self-contained folders)
is in test_architectures.py, test_export.py and test_self_contained.py, which include ModernBERT."""

import json

import pytest
import torch
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoModelForTokenClassification

import grain  # noqa: F401  (registers the compact classes with the Auto classes)
from grain.models import masks as masks_module
from grain.models import slicing
from grain.models.compact import bert as compact_module
from grain.models.masks import EncoderShape, expand_qk_mask
from grain.models.slicing import compact_from_masked
from tests.helpers.models import all_kept_masks, hard_masks, masked_outputs, tiny_model, token_batch
from tests.helpers.runs import readme_commands, run_grain, summaries

INIT = 0.2  # logits of order 1, so that 1e-5 is a strict bound


@pytest.fixture(params=["grouped", "padded"])
def plan(request, monkeypatch):
    """Both kernel plans of the compact attention run on CPU (the padded one is the GPU's)."""
    monkeypatch.setattr(compact_module, "use_padded_plan", lambda device: request.param == "padded")
    return request.param


def batch(model):
    return token_batch(low=3, pad_id=model.config.pad_token_id, token_types=None)


def compact_logits(model, masks):
    compact, _ = compact_from_masked(model, masks)
    with torch.no_grad():
        return compact.eval()(**batch(model)).logits


def test_a_qk_unit_is_a_rotary_pair():
    """The QK mask of a head has head_dim / 2 units; unit p masks Q dimensions p and p + head_dim / 2,
    the two that rotate_half pairs under one frequency, and no others."""
    shape = EncoderShape.of(tiny_model("modernbert"))
    assert shape.units_per_layer["qk"] == 16 and shape.qk_units_per_head == 4  # 4 heads of 8 dimensions
    mask = torch.ones(16)
    mask[2 * 4 + 1] = 0  # head 2, pair 1
    assert expand_qk_mask(mask, shape).nonzero().numel() == 30
    assert (expand_qk_mask(mask, shape) == 0).nonzero().flatten().tolist() == [2 * 8 + 1, 2 * 8 + 1 + 4]


def test_removing_one_pair_keeps_compact_equal_to_masked(plan):
    model = tiny_model("modernbert", initializer_range=INIT)
    masks = all_kept_masks(EncoderShape.of(model))
    masks["qk"][1, 2 * 4 + 1] = 0  # layer 1 (global), head 2, pair 1
    masks["qk"][0, 3] = 0          # layer 0 (sliding window), head 0, its last pair
    expected = masked_outputs(model, masks, batch(model)).logits
    unmasked = masked_outputs(model, all_kept_masks(EncoderShape.of(model)), batch(model)).logits
    assert (expected - unmasked).abs().max() > 1e-3  # the pairs mattered
    torch.testing.assert_close(compact_logits(model, masks), expected, atol=1e-5, rtol=0)


def test_the_wrong_pairing_would_not_equal_the_masked_model(monkeypatch):
    """Kept the two halves of two different pairs (a head's first halves with the next pair's second
    halves), the compact heads' rotation pairs the wrong dimensions and the compaction check refuses it;
    grain's own layout (`qk_dimensions`) always keeps a pair's two halves together."""
    model = tiny_model("modernbert", initializer_range=INIT)
    shape = EncoderShape.of(model)
    masks = all_kept_masks(shape)
    masks["qk"][1, 2 * 4 + 1] = 0
    rows = masks_module.qk_dimensions(torch.tensor([0, 2]), shape)
    assert rows.tolist() == [0, 2, 4, 6]  # pairs 0 and 2 of head 0: dimensions 0, 2 with 0 + 4, 2 + 4

    real = masks_module.qk_dimensions

    def wrong_pairing(units, shape):
        rows = real(units, shape)
        d, half = shape.head_dim, shape.head_dim // 2
        second = rows % d >= half
        shifted = (rows - rows % d) + half + (rows % d - half + 1) % half  # each second half, one pair on
        return torch.where(second, shifted, rows)

    monkeypatch.setattr(slicing, "qk_dimensions", wrong_pairing)
    with pytest.raises(RuntimeError, match="a compaction bug"):
        compact_from_masked(model, masks)


@pytest.mark.parametrize("layer_types", [
    ["sliding_attention"] * 3, ["full_attention"] * 3, ["full_attention", "sliding_attention", "full_attention"],
])
def test_local_and_global_layers_compact_exactly(layer_types, plan):
    """Every corner case of hard_masks (an emptied head, a head with VO units but no QK units, an empty
    attention, an empty FFN, a head with one rotary pair) in sliding-window and global layers; padded
    rows whose window holds no kept token included (token classification reads every position)."""
    model = tiny_model("modernbert", "token", initializer_range=INIT, layer_types=layer_types)
    masks = hard_masks(EncoderShape.of(model))
    expected = masked_outputs(model, masks, batch(model)).logits
    torch.testing.assert_close(compact_logits(model, masks), expected, atol=1e-5, rtol=0)


def test_gated_ffn_unit_is_input_and_gate_rows(plan):
    """Removing FFN unit j removes W_i rows j and intermediate + j and W_o column j: the compact W_i
    holds the kept input rows then their gate rows."""
    model = tiny_model("modernbert", initializer_range=INIT)
    masks = all_kept_masks(EncoderShape.of(model))
    masks["ffn"][1, 5] = 0
    compact, _ = compact_from_masked(model, masks)
    wi, full = compact.model.layers[1].mlp.Wi.weight, model.model.layers[1].mlp.Wi.weight
    kept = [j for j in range(48) if j != 5]
    assert torch.equal(wi, torch.cat([full[kept], full[[48 + j for j in kept]]]))
    expected = masked_outputs(model, masks, batch(model)).logits
    with torch.no_grad():
        torch.testing.assert_close(compact.eval()(**batch(model)).logits, expected, atol=1e-5, rtol=0)


def test_biases_where_the_config_has_them(plan):
    """attention_bias / mlp_bias: Wqkv's bias rows are sliced with its weight rows, an emptied sub-layer
    keeps its output bias; a config with one and not the other is refused."""
    model = tiny_model("modernbert", initializer_range=INIT, attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") and "layers" in name:
                param.normal_(0, 0.2)
    masks = hard_masks(EncoderShape.of(model))
    compact, _ = compact_from_masked(model, masks)
    assert compact.model.layers[1].attn.bias is not None and compact.model.layers[2].mlp.bias is not None
    expected = masked_outputs(model, masks, batch(model)).logits
    with torch.no_grad():
        torch.testing.assert_close(compact.eval()(**batch(model)).logits, expected, atol=1e-5, rtol=0)
    with pytest.raises(grain.errors.GrainError, match="attention_bias and mlp_bias differ"):
        compact_from_masked(tiny_model("modernbert", attention_bias=True), masks)


def test_mean_pooling_head(plan):
    model = tiny_model("modernbert", initializer_range=INIT, classifier_pooling="mean")
    masks = hard_masks(EncoderShape.of(model), seed=2)
    expected = masked_outputs(model, masks, batch(model)).logits
    torch.testing.assert_close(compact_logits(model, masks), expected, atol=1e-5, rtol=0)


# The bar, as the README's "Model families" section writes it: `python -m grain.run
# model=tiny-modernbert task=<t> sparsity=0.9 trainer.max_steps=30` completes, compact == masked within
# 1e-5, and the compact model reloads through the Auto class (10-30 s each: QA in `make test-full`).
@pytest.mark.parametrize("task,auto", [
    ("sst2", AutoModelForSequenceClassification),
    ("conll2003", AutoModelForTokenClassification),
    pytest.param("squad_offline", AutoModelForQuestionAnswering, marks=pytest.mark.slow),
])
def test_readme_tiny_modernbert_runs(task, auto, tmp_path):
    [command] = [c for c in readme_commands("Model families") if f"task={task}" in c]
    cheap = ["logger=csv", "task.max_train_samples=64", "task.max_eval_samples=64", "teacher.max_steps=4"]
    result = run_grain([*command, *cheap], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = summaries(tmp_path)
    summary = json.loads(path.read_text())
    assert summary["status"] == "completed" and summary["student"]["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert summary["compact"]["max_abs_logit_diff_vs_masked"] <= 1e-5
    loaded = auto.from_pretrained(summary["compact"]["path"])
    assert type(loaded).__name__.startswith("GrainModernBertFor")


def test_latency_model_times_modernberts_own_layers(tmp_path, monkeypatch):
    """`speedup=` on ModernBERT: the latency model times ModernBERT's compact sub-layers (rotary attention,
    the gated FFN, pre-norm), not BERT's, and its empty model is ModernBERT's."""
    from grain.measure import latency_model as lm
    from grain.models.compact.modernbert import GrainGatedMLP, GrainModernBertForSequenceClassification

    config = tiny_model("modernbert").config
    shape = EncoderShape.of(config)
    model = lm._timing_model(config, shape, [[4, 0]], [[8, 3]], [40], vocab_size=8)
    assert isinstance(model.layers[0].mlp, GrainGatedMLP) and model.layers[0].mlp.Wi.weight.shape == (80, 32)
    assert model.config.rotary_pairs == [[[0, 1], []]]
    hidden = torch.randn(2, 12, 32)
    attention, ffn = lm._sublayers(config, shape, [4, 0], [8, 3], 40, hidden, torch.ones(2, 12, dtype=torch.long))
    assert attention().shape == ffn().shape == hidden.shape
    built = []
    real = lm._timing_model
    monkeypatch.setattr(lm, "_timing_model", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    measured = lm.latency_model(config, torch.device("cpu"), 2, 8, tmp_path, min_run_time=0.002, progress=lambda _: None,
                                rounds=1)
    assert built and all(type(m).__name__.startswith("GrainModernBert") for m in built)
    assert any(isinstance(m, GrainModernBertForSequenceClassification) for m in built)  # the empty model
    assert measured.key["model_type"] == "modernbert" and measured.ffn_ms[-1] > 0


def test_scaled_rope_survives_save_and_load(tmp_path):
    """A rope type other than the default (here linear scaling, as long-context checkpoints set it): the
    reloaded compact model rebuilds its rotary tables as transformers does and gives the same logits."""
    rope = {"sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 160000.0}}
    model = tiny_model("modernbert", initializer_range=INIT, rope_parameters=rope)
    compact, _ = compact_from_masked(model, hard_masks(EncoderShape.of(model)))
    compact.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch(model)).logits, compact.eval()(**batch(model)).logits, atol=0, rtol=0)

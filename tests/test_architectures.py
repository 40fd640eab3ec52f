"""Every model family grain supports (grain.architectures): masks hook the family's modules, the
compact model equals the masked one on both kernel plans, corner cases included, saves and loads
through the Auto classes, and `python -m grain.run model=tiny-<family>` completes with compact ==
masked."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, GPT2Config, XLMRobertaConfig

import grain  # noqa: F401  (registers the compact classes with the Auto classes)
from grain.architectures import architecture_of, find_architecture, supported_families
from grain.errors import GrainError
from grain.measure.compare import encoder_linear_param_count
from grain.models import slicing
from grain.models.compact import bert as compact_module
from grain.models.masks import EncoderShape, attach_mask_hooks, unit_weights
from grain.models.registry import is_compact
from grain.models.slicing import compact_from_masked
from grain.pruning.ranking import kept_linear_params
from tests.helpers.configs import compose_config
from tests.helpers.device_guard import DeviceGuard
from tests.helpers.fake_device import ACCELERATOR, fake_accelerator, to_accelerator
from tests.helpers.models import FAMILIES, hard_masks, masked_outputs, tiny_model, token_batch
from tests.helpers.runs import run_grain, summaries

# every family's tiny model (tests.helpers.models.FAMILIES) has 3 layers, hidden 32, 4 heads, FFN 48 and
# weights drawn wider than the default: logits of order 1, so that 1e-5 is a strict bound
INIT = 0.2
CASES = [(family, head) for family, (_, _, heads) in FAMILIES.items() for head in heads]
FIELDS = {"sequence": ["logits"], "token": ["logits"], "qa": ["start_logits", "end_logits"]}


def family_batch(model):
    """Token ids with padding (the family's padding id where the attention mask is 0: RoBERTa's
    position ids count only the other tokens); token types only where the family has two."""
    two_types = getattr(model.config, "type_vocab_size", 1) > 1
    return token_batch(low=3, pad_id=model.config.pad_token_id, token_types="halves" if two_types else None)


@pytest.fixture(params=["grouped", "padded"])
def plan(request, monkeypatch):
    """Both kernel plans of the compact attention run on CPU (the padded one is the GPU's)."""
    monkeypatch.setattr(compact_module, "use_padded_plan", lambda device: request.param == "padded")
    return request.param


@pytest.mark.parametrize("family,head", CASES)
def test_compact_equals_masked(family, head, plan):
    model = tiny_model(family, head, initializer_range=INIT)
    masks = hard_masks(EncoderShape.of(model))
    inputs = family_batch(model)
    expected = masked_outputs(model, masks, inputs)
    compact, _ = compact_from_masked(model, masks)
    assert is_compact(compact) and compact.config.model_type == architecture_of(model).compact_model_type
    with torch.no_grad():
        got = compact.eval()(**inputs)
    for field in FIELDS[head]:
        assert getattr(expected, field).abs().max() > 0.1  # not a vanishing signal
        torch.testing.assert_close(getattr(got, field), getattr(expected, field), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_match_the_masked_models(family):
    """Hidden-state distillation reads the same states from both (embeddings output, then each
    layer's; ELECTRA's after embeddings_project) once training has compacted the student."""
    model = tiny_model(family, initializer_range=INIT)
    masks = hard_masks(EncoderShape.of(model))
    inputs = family_batch(model)
    compact, _ = compact_from_masked(model, masks)
    expected = masked_outputs(model, masks, {**inputs, "output_hidden_states": True}).hidden_states
    with torch.no_grad():
        got = compact.eval()(**inputs, output_hidden_states=True).hidden_states
    assert len(got) == len(expected) == 4
    kept = inputs["attention_mask"].bool()
    for a, b in zip(got, expected):
        torch.testing.assert_close(a[kept], b[kept], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_compact_has_exactly_the_kept_parameters(family, seed):
    model = tiny_model(family, initializer_range=INIT)
    shape = EncoderShape.of(model)
    masks = hard_masks(shape, seed)
    masks["qk"] *= masks["vo"].view(shape.num_layers, shape.num_heads, -1).amax(-1).repeat_interleave(shape.qk_units_per_head, 1)
    compact, _ = compact_from_masked(model, masks)
    assert encoder_linear_param_count(compact) == kept_linear_params(masks, shape)
    assert encoder_linear_param_count(model) == kept_linear_params({k: torch.ones_like(m) for k, m in masks.items()}, shape)
    layers = f".{architecture_of(model).layer_path}."
    outside = {n: p.shape for n, p in model.named_parameters() if layers not in n}
    assert outside == {n: p.shape for n, p in compact.named_parameters() if layers not in n}  # embeddings, heads


@pytest.mark.parametrize("family", FAMILIES)
def test_compaction_checks_itself_against_the_masked_model(family, monkeypatch):
    """Every compaction compares the compact model with the masked one where it happens and keeps the
    difference; a compaction that slices the wrong units is refused there, not found later."""
    model = tiny_model(family, initializer_range=INIT)
    masks = hard_masks(EncoderShape.of(model), seed=3)
    compact, _ = compact_from_masked(model, masks)
    assert compact.compaction_max_abs_diff < 1e-5

    real_plan = slicing.compaction_plan

    def off_by_one(structure, arch, prefix, *shape):  # the FFN rows of layer 0 taken one unit too far
        plan = real_plan(structure, arch, prefix, *shape)
        for name, rule in plan.items():
            if ".0." in name and rule.rows is not None and name.endswith(
                ("intermediate.dense.weight", "ffn.lin1.weight", "mlp.Wi.weight")
            ):
                plan[name] = slicing.Slice(rule.source, rows=(rule.rows + 1) % model.config.to_dict().get(
                    "intermediate_size", model.config.to_dict().get("hidden_dim")), cols=rule.cols)
        return plan

    monkeypatch.setattr(slicing, "compaction_plan", off_by_one)
    with pytest.raises(RuntimeError, match="a compaction bug"):
        compact_from_masked(model, masks)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_through_auto_class(family, tmp_path):
    model = tiny_model(family, initializer_range=INIT)
    compact, _ = compact_from_masked(model, hard_masks(EncoderShape.of(model)))
    compact.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(compact)
    from grain.models.registry import load_saved_model  # by the class name config.json holds

    assert type(load_saved_model(tmp_path)) is type(compact)
    inputs = family_batch(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, compact.eval()(**inputs).logits, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["roberta", "electra", "distilbert", "deberta-v2", "modernbert"])
def test_compact_model_on_an_accelerator_forwards_without_syncs(family):
    """The families' embeddings (RoBERTa's position ids from the token ids, ELECTRA's projection,
    DistilBERT's) keep the compact forward on the device, with no host sync."""
    model = tiny_model(family, initializer_range=INIT)
    masks = hard_masks(EncoderShape.of(model))
    inputs = family_batch(model)
    expected = masked_outputs(model, masks, inputs).logits
    compact, _ = compact_from_masked(model, masks)  # on the CPU: its check runs the HF model (see test_device_guard)
    with fake_accelerator() as accelerator:
        to_accelerator(compact)
        accelerator.syncs.clear()
        with torch.no_grad():
            logits = compact.eval()(**{k: v.to(ACCELERATOR) for k, v in inputs.items()}).logits
        assert dict(accelerator.syncs) == {}
        logits = logits.to("cpu")
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_compaction_and_forward_name_their_devices(family):
    """DeviceGuard: grain's code creates no tensor without a device (or *_like / new_*) and does
    not sync with the host, in compaction (but reading the masks) and in the compact forward."""
    model = tiny_model(family, initializer_range=INIT)
    masks = hard_masks(EncoderShape.of(model))
    with DeviceGuard():
        compact, _ = compact_from_masked(model, masks)
    with torch.no_grad(), DeviceGuard():
        compact.eval()(**family_batch(model))


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_hook_the_familys_modules(family):
    model = tiny_model(family, initializer_range=INIT)
    shape = EncoderShape.of(model)
    arch = architecture_of(model)
    assert (shape.num_layers, shape.hidden_size, shape.num_heads, shape.intermediate_size) == (3, 32, 4, 48)
    assert EncoderShape.of(model.config.to_dict()) == shape
    weights = unit_weights(model, 1)
    if family == "modernbert":  # rotary pairs (two Q/K rows each) and gated FFN units (input and gate rows)
        assert shape == EncoderShape(3, 32, 4, 48, qk_unit_width=2, gated_ffn=True, bias=False)
        assert [w.shape for w in weights["qk"]] == [(16, 64)] * 2 and [w.shape for w in weights["vo"]] == [(32, 32)] * 2
        assert [w.shape for w in weights["ffn"]] == [(48, 64), (48, 32)]
        # pair 1 of head 2 is Q rows 2 * 8 + 1 and 2 * 8 + 1 + 4 of Wqkv; FFN unit 5 is Wi rows 5 and 48 + 5
        fused = model.model.layers[1].attn.Wqkv.weight
        assert torch.equal(weights["qk"][0][2 * 4 + 1], torch.cat([fused[17], fused[21]]))
        assert torch.equal(weights["qk"][1][2 * 4 + 1], torch.cat([fused[32 + 17], fused[32 + 21]]))
        wi = model.model.layers[1].mlp.Wi.weight
        assert torch.equal(weights["ffn"][0][5], torch.cat([wi[5], wi[53]]))
    else:
        assert shape == EncoderShape(3, 32, 4, 48)
        assert [w.shape for w in weights["qk"] + weights["vo"]] == [(32, 32)] * 4
        assert [w.shape for w in weights["ffn"]] == [(48, 32)] * 2
    handles = attach_mask_hooks(model, lambda layer, kind: None)
    assert len(handles) == 3 * shape.num_layers
    assert all(arch.module(model, 0, role)._forward_hooks or arch.module(model, 0, role)._forward_pre_hooks
               for role in ("query", "attention_output", "ffn_out"))
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("buckets,max_position", [(256, 512), (8, 64), (-1, 64)])
def test_deberta_relative_positions_are_hfs(buckets, max_position):
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    from grain.models.compact.deberta import relative_positions

    for seq in (1, 7, 130, 600):
        states = torch.zeros(1, seq, 2)
        expected = build_relative_position(states, states, bucket_size=buckets, max_position=max_position)
        assert torch.equal(relative_positions(seq, buckets, max_position, "cpu"), expected)


def test_deberta_with_separate_position_projections_is_refused():
    model = tiny_model("deberta-v2", initializer_range=INIT, share_att_key=False)
    with pytest.raises(GrainError, match="share_att_key=false"):
        attach_mask_hooks(model, lambda layer, kind: None)
    with pytest.raises(GrainError, match="share_att_key=false"):
        compact_from_masked(model, hard_masks(EncoderShape.of(model)))


def test_the_registry_finds_families_and_refuses_others():
    assert architecture_of(XLMRobertaConfig()).family == "roberta"
    assert architecture_of("camembert").family == "roberta"
    assert architecture_of({"model_type": "grain_electra"}).family == "electra"
    assert find_architecture(GPT2Config()) is None
    supported = "bert, camembert, deberta-v2, distilbert, electra, modernbert, roberta"
    with pytest.raises(GrainError, match=f"grain does not support gpt2 models; .* {supported}"):
        architecture_of(GPT2Config())
    assert set(supported_families()) >= {"bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "deberta-v2"}


@pytest.mark.parametrize("name,model_type,positions", [("tiny", "bert", 512), ("tiny-roberta", "roberta", 514),
                                                        ("tiny-electra", "electra", 512),
                                                        ("tiny-distilbert", "distilbert", 512),
                                                        ("tiny-deberta", "deberta-v2", 512),
                                                        ("tiny-modernbert", "modernbert", 512)])
def test_random_models_of_each_family(name, model_type, positions, tmp_path):
    from grain.config import validate_config
    from grain.models.backbone import load_task_model

    cfg = compose_config([f"model={name}"], tmp_path)
    validate_config(cfg)
    model = load_task_model(cfg.model, AutoModelForSequenceClassification, 2)
    assert model.config.model_type == model_type and model.config.max_position_embeddings == positions
    assert model.config.vocab_size == 30522 and model.config.pad_token_id == 0  # the MiniLM tokenizer's
    again = load_task_model(cfg.model, AutoModelForSequenceClassification, 2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))  # seeded


# Every family end to end in `make test-full` (17-100 s each on two cores); by default BERT's tiny runs
# (and ModernBERT's, from the README: test_modernbert.py). Every family's compaction, save/load, hidden
# states and ONNX export are checked above and in test_export.py / test_self_contained.py.
@pytest.mark.parametrize("family", [
    pytest.param("roberta", marks=pytest.mark.slow), pytest.param("electra", marks=pytest.mark.slow),
    pytest.param("distilbert", marks=pytest.mark.slow), pytest.param("deberta", marks=pytest.mark.slow),
])
def test_tiny_run_compacts_exactly(family, tmp_path):
    """The issue's bar: `python -m grain.run model=tiny-<family> task=sst2 sparsity=0.9
    trainer.max_steps=30` completes, compact == masked within 1e-5, and the compact model loads
    through the Auto class after `import grain`."""
    result = run_grain(
        [f"model=tiny-{family}", "task=sst2", "sparsity=0.9", "trainer.max_steps=30", "logger=csv",
         "task.max_train_samples=64", "teacher.max_steps=4"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = summaries(tmp_path)
    summary = json.loads(path.read_text())
    assert summary["status"] == "completed"
    compact = summary["compact"]
    assert compact["max_abs_logit_diff_vs_masked"] <= 1e-5
    loaded = AutoModelForSequenceClassification.from_pretrained(compact["path"])
    names = {"distilbert": "DistilBert", "deberta": "DebertaV2"}
    assert type(loaded).__name__ == f"Grain{names.get(family, family.capitalize())}ForSequenceClassification"

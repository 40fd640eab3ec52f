"""student.embedding_rank: the word embeddings factorized (truncated SVD) before distillation and
trained so, as the official GRAIN (airaria/GRAIN, rank 192); the compact model keeps the factors."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import grain  # noqa: F401  (registers the compact classes with the Auto classes)
from grain.config import validate_config
from grain.errors import GrainError
from grain.models.compact.bert import FactorizedEmbedding
from grain.models.masks import EncoderShape, attach_mask_hooks
from grain.models.slicing import (
    compact_from_masked,
    factorize_input_embeddings,
    factorized_copy,
    factorized_rank,
    slice_optimizer_state,
)
from grain.modules.common import decay_groups
from grain.pruning.ranking import prunable_params
from tests.helpers.configs import compose_config
from tests.helpers.models import tiny_model, token_batch
from tests.helpers.runs import run_grain, summaries
from tests.helpers.training import make_trainer, setup_parts

# the tiny BERT of these tests (2 layers, hidden 32, 4 heads, FFN 48, vocabulary 100, no dropout), and its
# batch: 3 rows of 10 tokens, row 1 padded after 7
TINY = dict(layers=2, dropout=0.0)
BATCH = dict(size=(3, 10), seed=1, lengths=[10, 7, 10], token_types=None)


def half_masks(shape: EncoderShape) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    masks = {kind: (torch.rand(shape.num_layers, size, generator=generator) > 0.5).float()
             for kind, size in shape.units_per_layer.items()}
    masks["qk"] = masks["qk"] * masks["vo"]
    return masks


def test_full_rank_factorized_student_computes_the_same_logits():
    model = tiny_model(**TINY)
    factorized = factorize_input_embeddings(tiny_model(**TINY), 32)
    words = factorized.get_input_embeddings()  # HF's accessor finds the factorized module
    assert isinstance(words, FactorizedEmbedding) and factorized_rank(factorized) == 32
    assert words is factorized.bert.embeddings.word_embeddings
    names = {name for name, _ in factorized.named_parameters()}
    assert {"bert.embeddings.word_embeddings.embedding.weight", "bert.embeddings.word_embeddings.projection.weight"} <= names
    inputs = token_batch(**BATCH)
    with torch.no_grad():
        torch.testing.assert_close(factorized(**inputs).logits, model(**inputs).logits, atol=1e-4, rtol=0)


def test_factorized_student_trains_the_factors_and_counts_the_same_sparsity():
    model = factorize_input_embeddings(tiny_model(**TINY), 8)
    words = model.get_input_embeddings()
    assert words.embedding.weight.requires_grad and words.projection.weight.requires_grad
    # the sparsity is over the encoder's prunable units only: the factorized embeddings do not enter its
    # shape, nor its parameters (by hand: 2 x (32 x 66 + 32 x 65 + 48 x 65))
    assert EncoderShape.of(model) == EncoderShape(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=48)
    assert prunable_params(EncoderShape.of(model)) == 14624
    decay, no_decay = decay_groups(model.named_parameters(), 0.01)
    assert {id(words.embedding.weight), id(words.projection.weight)} <= {id(p) for p in decay["params"]}
    model.train()
    loss = model(**token_batch(**BATCH), labels=torch.tensor([0, 1, 2])).loss
    loss.backward()
    assert words.embedding.weight.grad.abs().sum() > 0 and words.projection.weight.grad.abs().sum() > 0


def test_compaction_copies_the_factors_and_keeps_their_adam_state(tmp_path):
    model = factorize_input_embeddings(tiny_model(**TINY), 8)
    masks = half_masks(EncoderShape.of(model))
    handles = attach_mask_hooks(model, lambda layer, kind: masks[kind][layer])
    compact, plan = compact_from_masked(model, masks)
    assert compact.config.embedding_rank == 8
    words = compact.get_input_embeddings()
    assert isinstance(words, FactorizedEmbedding)
    source = model.get_input_embeddings()
    assert torch.equal(words.embedding.weight, source.embedding.weight)
    assert torch.equal(words.projection.weight, source.projection.weight)
    inputs = token_batch(**BATCH)
    with torch.no_grad():
        torch.testing.assert_close(compact.eval()(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)
    with pytest.raises(GrainError, match="already factorized"):
        factorized_copy(compact, 4)

    # the optimizer state of the factors follows them (compact_in_place)
    old_params = dict(model.named_parameters())
    state = {p: {"step": torch.tensor(3.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
             for p in old_params.values()}
    new_state = slice_optimizer_state(old_params, dict(compact.named_parameters()), plan, state)
    for factor in ("embedding", "projection"):
        old, new = getattr(source, factor).weight, getattr(words, factor).weight
        assert torch.equal(new_state[new]["exp_avg"], state[old]["exp_avg"])
        assert torch.equal(new_state[new]["exp_avg_sq"], state[old]["exp_avg_sq"])

    # saved and loaded factorized
    compact.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["embedding_rank"] == 8
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.get_input_embeddings(), FactorizedEmbedding)
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, compact(**inputs).logits, atol=0, rtol=0)


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["student.embedding_rank=0"], "student.embedding_rank=0"),
        (["student.embedding_rank=abc"], "student.embedding_rank='abc'"),
        (["student.embedding_rank=64"], "student.embedding_rank=64"),  # model=tiny: hidden size 64
        (["student.embedding_rank=16", "compact.embedding_rank=16"], "student.embedding_rank=16"),
    ],
)
def test_bad_embedding_rank_is_refused_in_one_line(overrides, named, tmp_path):
    cfg = compose_config(["model=tiny", *overrides], tmp_path)
    with pytest.raises(GrainError) as err:
        validate_config(cfg)
    message = str(err.value)
    assert message.startswith(named) and "\n" not in message and "e.g." in message
    if len(overrides) == 2:
        assert "compact.embedding_rank" in message and "=null" in message


def test_embedding_rank_below_the_hidden_size_is_accepted(tmp_path):
    validate_config(compose_config(["model=tiny", "student.embedding_rank=16"], tmp_path))
    assert compose_config([], tmp_path).student.embedding_rank is None


@pytest.mark.parametrize("preset", ["paper_glue", "paper_squad", "paper_conll"])
def test_paper_presets_factorize_before_distillation(preset, tmp_path):
    cfg = compose_config([f"experiment={preset}"], tmp_path)
    assert cfg.student.embedding_rank == 192 and cfg.compact.embedding_rank is None
    again = compose_config([f"experiment={preset}", "student.embedding_rank=192"], tmp_path)
    assert again.student.embedding_rank == 192


# whole runs, slow: by default the compaction of both cases runs in-process (compacted in the compact stage:
# test_every_family_factorizes_and_compacts_with_the_factors; in training:
# test_in_training_compaction_keeps_the_factors_and_their_adam_state)
@pytest.mark.slow
@pytest.mark.parametrize("in_training", [True, False])
def test_tiny_run_trains_factorized_and_saves_the_factorized_compact_model(in_training, tmp_path):
    result = run_grain(
        ["task=sst2", "model=tiny", "student.embedding_rank=16", "trainer.max_steps=20", "logger=csv",
         f"pruner.compact_after_end={str(in_training).lower()}"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = summaries(tmp_path)
    summary = json.loads(path.read_text())
    assert summary["status"] == "completed"
    assert summary["compact"]["compacted_during_training"] is in_training
    assert summary["compact"]["max_abs_logit_diff_vs_masked"] <= 1e-5
    out = path.parent / "compact"
    assert json.loads((out / "config.json").read_text())["embedding_rank"] == 16
    model = AutoModelForSequenceClassification.from_pretrained(out)
    words = model.get_input_embeddings()
    assert isinstance(words, FactorizedEmbedding) and words.embedding.weight.shape[1] == 16


@pytest.mark.parametrize("model_name", ["tiny", "tiny-roberta", "tiny-distilbert", "tiny-electra", "tiny-deberta"])
def test_every_family_factorizes_and_compacts_with_the_factors(model_name, tmp_path):
    from grain.models.backbone import load_task_model
    from grain.stages.prune import init_student

    cfg = compose_config([f"model={model_name}", "student.embedding_rank=16", "student.init=pretrained"], tmp_path)
    reference = load_task_model(cfg.model, AutoModelForSequenceClassification, 2).eval()
    student = init_student(cfg, reference, 2).eval()
    assert factorized_rank(student) == 16
    masks = half_masks(EncoderShape.of(student))
    handles = attach_mask_hooks(student, lambda layer, kind: masks[kind][layer])
    compact, _ = compact_from_masked(student, masks)
    assert compact.config.embedding_rank == 16 and isinstance(compact.get_input_embeddings(), FactorizedEmbedding)
    inputs = token_batch(**BATCH)
    with torch.no_grad():
        torch.testing.assert_close(compact.eval()(**inputs).logits, student(**inputs).logits, atol=1e-5, rtol=0)
    for handle in handles:
        handle.remove()


def test_in_training_compaction_keeps_the_factors_and_their_adam_state(tmp_path):
    from grain.stages.prune import build_student_module

    cfg, datamodule, teacher = setup_parts(tmp_path, ["student.embedding_rank=16", "pruner.end=0.3"])
    module = build_student_module(cfg, teacher, 2)
    make_trainer(tmp_path, max_epochs=1).fit(module, datamodule=datamodule)
    assert module.compacted and module.student.config.embedding_rank == 16
    words = module.student.get_input_embeddings()
    assert isinstance(words, FactorizedEmbedding)
    optimizer = module.optimizers().optimizer
    decay, _ = optimizer.param_groups
    for factor in (words.embedding.weight, words.projection.weight):
        assert any(p is factor for p in decay["params"])
        assert optimizer.state[factor]["step"] == module.trainer.global_step  # moments carried through compaction

"""The teacher cache: reused teachers are scored on this run's data, saves never collide, damage is named."""

import json
import threading
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from grain.errors import GrainError
from grain.models.backbone import load_task_model
from grain.stages import teacher as stages_teacher
from grain.stages.teacher import META_FILE, run_teacher_stage, save_teacher, teacher_cache_dir
from grain.stages.trainer import build_datamodule
from grain.tasks.evaluate import evaluate
from tests.helpers.configs import compose_config


def teacher_cfg(tmp_path, *overrides):
    return compose_config(["model=tiny", "stages=[teacher]", "trainer.max_steps=2", "logger=none", *overrides], tmp_path)


def cache_a_teacher(cfg, tokenizer, meta):
    """Put a (random tiny) teacher in the cache where run_teacher_stage looks for it, with `meta`."""
    datamodule = build_datamodule(cfg, tokenizer, cfg.teacher.batch_size, cfg.teacher.max_train_samples)
    model = load_task_model(cfg.model, datamodule.auto_model_class, datamodule.num_labels)
    cache_dir = teacher_cache_dir(cfg, datamodule)
    save_teacher(model, tokenizer, cache_dir, meta)
    return cache_dir, model


def test_a_cached_teacher_is_scored_on_this_runs_evaluation_set(tmp_path, tokenizer):
    cfg = teacher_cfg(tmp_path, "task.max_eval_samples=16")
    stale = {"validation/accuracy": 0.123}  # what the run that cached it measured on its own eval set
    cache_dir, model = cache_a_teacher(cfg, tokenizer, {"metrics": stale, "train_seconds": 1.0})

    result = run_teacher_stage(cfg, tokenizer, tmp_path / "run", logger=None)
    assert result.cached and result.path == str(cache_dir)
    datamodule = build_datamodule(cfg, tokenizer, 8, None)
    datamodule.setup("validate")
    assert result.metrics == evaluate(model, datamodule, "reference")
    assert result.metrics != stale


def test_concurrent_saves_of_one_teacher_all_succeed(tmp_path, tokenizer, tiny_bert):
    cache_dir = tmp_path / "teachers" / "sst2-tiny-key"
    barrier = threading.Barrier(12)
    errors = []

    def save(i):
        barrier.wait()
        try:
            save_teacher(tiny_bert, tokenizer, cache_dir, {"metrics": {}, "train_seconds": float(i)})
        except Exception as err:  # noqa: BLE001 - the test counts them
            errors.append(repr(err))

    threads = [threading.Thread(target=save, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(p.name for p in cache_dir.parent.iterdir()) == [cache_dir.name]  # no temporaries left
    assert json.loads((cache_dir / META_FILE).read_text())["metrics"] == {}
    from transformers import AutoModelForSequenceClassification

    loaded = AutoModelForSequenceClassification.from_pretrained(cache_dir)
    torch.testing.assert_close(loaded.classifier.weight, tiny_bert.classifier.weight)


def test_a_save_replaces_a_leftover_without_metadata(tmp_path, tokenizer, tiny_bert):
    cache_dir = tmp_path / "teachers" / "sst2-tiny-key"
    cache_dir.mkdir(parents=True)
    (cache_dir / "model.safetensors").write_bytes(b"half")
    save_teacher(tiny_bert, tokenizer, cache_dir, {"metrics": {}, "train_seconds": 0.0})
    assert (cache_dir / META_FILE).exists() and (cache_dir / "model.safetensors").stat().st_size > 100
    assert sorted(p.name for p in cache_dir.parent.iterdir()) == [cache_dir.name]


@pytest.mark.parametrize("damage", ["weights", "meta"])
def test_a_damaged_cached_teacher_is_named_with_the_fix(damage, tmp_path, tokenizer):
    cfg = teacher_cfg(tmp_path)
    cache_dir, _ = cache_a_teacher(cfg, tokenizer, {"metrics": {}, "train_seconds": 1.0})
    if damage == "weights":
        (cache_dir / "model.safetensors").write_bytes(b"\x00" * 64)
    else:
        (cache_dir / META_FILE).write_text("{not json")
    with pytest.raises(GrainError) as err:
        run_teacher_stage(cfg, tokenizer, tmp_path / "run", logger=None)
    message = str(err.value)
    assert str(cache_dir) in message and "rm -r" in message and "\n" not in message


class StopAt(pl.Callback):
    """Stands for a kill: an error at the start of optimizer step `step` (after the checkpoints before it)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("killed")


def teacher_weights(result) -> dict:
    return {name: value.detach().clone() for name, value in result.model.state_dict().items()}


def test_a_killed_teachers_fine_tuning_resumes_from_its_checkpoint_to_the_same_weights(tmp_path, tokenizer,
                                                                                       monkeypatch):
    """The teacher stage checkpoints its fine-tuning (every 2 steps here) beside its cache entry; a run with the
    same settings after a kill resumes there (data position, optimizer, schedule, dropout) and ends with the
    uninterrupted run's weights, then caches the teacher and drops the checkpoint."""
    settings = ["trainer.max_steps=-1", "teacher.max_steps=12", "teacher.epochs=3", "teacher.batch_size=8",
                "teacher.checkpoint_every_n_steps=2"]
    whole = run_teacher_stage(teacher_cfg(tmp_path / "whole", *settings), tokenizer, tmp_path / "whole" / "run", None)

    cfg = teacher_cfg(tmp_path / "killed", *settings)
    real_build = stages_teacher.build_trainer
    monkeypatch.setattr(stages_teacher, "build_trainer",
                        lambda *args, callbacks=(), **kwargs: real_build(*args, callbacks=[*callbacks, StopAt(11)], **kwargs))
    with pytest.raises(RuntimeError, match="killed"):
        run_teacher_stage(cfg, tokenizer, tmp_path / "killed" / "run1", None)
    monkeypatch.setattr(stages_teacher, "build_trainer", real_build)
    partial = next((tmp_path / "killed").glob("cache/teachers/*.partial"))
    assert torch.load(partial / "last.ckpt", weights_only=True, map_location="cpu")["global_step"] == 10  # in the second epoch

    resumed = run_teacher_stage(cfg, tokenizer, tmp_path / "killed" / "run2", None)  # the same settings, a new run
    assert not resumed.cached and not partial.exists() and Path(resumed.path).name == partial.name[: -len(".partial")]
    expected, got = teacher_weights(whole), teacher_weights(resumed)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert resumed.metrics == whole.metrics


def test_another_model_saved_at_the_same_path_is_another_teacher(tmp_path, tokenizer, tiny_bert):
    """The teacher cache is keyed by the backbone's content: a model saved over the first at the same path
    fine-tunes (and caches) its own teacher instead of reusing the first one's."""
    backbone = tmp_path / "backbone"
    tiny_bert.save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    cfg = teacher_cfg(tmp_path, "model=bert-base", f"model.pretrained={backbone}", f"model.tokenizer={backbone}")
    datamodule = build_datamodule(cfg, tokenizer, 8, None)
    first = teacher_cache_dir(cfg, datamodule)
    assert teacher_cache_dir(cfg, datamodule) == first  # the same content, the same teacher
    with torch.no_grad():
        tiny_bert.classifier.weight.add_(1.0)
    tiny_bert.save_pretrained(backbone)
    assert teacher_cache_dir(cfg, datamodule) != first

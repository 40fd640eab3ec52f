"""Config composition for every group option, overrides, and refusal of bad values."""

import re

import pytest
from omegaconf import OmegaConf

from grain.config import validate_config
from grain.errors import GrainError
from tests.helpers.configs import OWN_DATA_FILES, compose_config, options


@pytest.mark.parametrize("task", options("task"))
@pytest.mark.parametrize("model", options("model"))
def test_every_task_and_model_composes(task, model, tmp_path):
    # RoBERTa is refused unless the run leaves compaction out (tests/test_robustness.py)
    masked_only = ["stages=[teacher,prune]", "pruner.compact_after_end=false"] if model == "roberta-base" else []
    cfg = compose_config([f"task={task}", f"model={model}", *masked_only, *OWN_DATA_FILES.get(task, [])], tmp_path)
    validate_config(cfg)
    assert cfg.task.name == task
    assert cfg.model.name == model or cfg.model.name.startswith(f"{model}-")  # ettin-encoder-<size>
    assert cfg.task.datamodule._target_.startswith("grain.tasks.")
    OmegaConf.to_container(cfg.task, resolve=True)


@pytest.mark.parametrize("trainer", options("trainer"))
def test_every_trainer_builds_a_lightning_trainer(trainer, tmp_path):
    import torch

    from grain.stages.trainer import build_trainer

    cfg = compose_config([f"trainer={trainer}", "trainer.precision=bf16-mixed"], tmp_path)
    validate_config(cfg)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("no GPU here")
    overrides = {"trainer.accelerator": "cpu"} if trainer == "ddp" else {}  # ddp: gloo on CPU
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    built = build_trainer(cfg, cfg.student, tmp_path / "student", logger=None)
    assert built.max_steps == -1 and built.max_epochs == cfg.student.epochs
    assert built.precision == "bf16-mixed"


@pytest.mark.parametrize("group", ["pruner", "distillation", "logger", "experiment"])
def test_every_option_of_other_groups_composes(group, tmp_path):
    for option in options(group):
        cfg = compose_config([f"{group}={option}"], tmp_path)
        validate_config(cfg)


@pytest.mark.parametrize("bad", ["1.5", "1.0", "-0.1", "abc"])
def test_bad_sparsity_is_refused_with_its_value(bad, tmp_path):
    cfg = compose_config([f"sparsity={bad}"], tmp_path)
    with pytest.raises(GrainError, match=rf"sparsity=.?{re.escape(bad)}"):
        validate_config(cfg)


def test_bad_pruner_settings_are_refused(tmp_path):
    with pytest.raises(GrainError, match="pruner.score='nope'"):
        validate_config(compose_config(["pruner.score=nope"], tmp_path))
    with pytest.raises(GrainError, match="pruner.start"):
        validate_config(compose_config(["pruner.start=0.5", "pruner.end=0.3"], tmp_path))
    with pytest.raises(GrainError, match="student.init"):
        validate_config(compose_config(["student.init=scratch"], tmp_path))


def test_run_dir_names_task_model_and_sparsity(tmp_path):
    cfg = compose_config(["task=qnli", "model=tiny", "sparsity=0.95"], tmp_path)
    run_dir = cfg.hydra.run.dir
    assert "/outputs/qnli/tiny/s0.95/" in run_dir


def test_report_names_variants_and_writes_table(tmp_path):
    import json

    from grain.report import main as report_main

    variants = [("grain", "grad", 0.83), ("random", "random", 0.78), ("grain", "magnitude", 0.8)]
    for i, (pruner, score, metric) in enumerate(variants):
        run = tmp_path / "sweep" / str(i)
        run.mkdir(parents=True)
        summary = {
            "task": "sst2", "model": "tiny", "sparsity": 0.9, "status": "completed", "metric_name": "accuracy",
            "config": {"pruner": {"name": pruner, "score": score}, "distillation": {"name": "grain"}},
            "teacher": {"metric": 0.85}, "student": {"metric": metric, "sparsity": 0.9, "heads_kept": 3, "heads_total": 8},
        }
        (run / "summary.json").write_text(json.dumps(summary))
    assert report_main([str(tmp_path / "sweep"), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "runs.md").read_text()
    assert "| grain |" in table and "| random |" in table and "| grain-magnitude |" in table
    assert "0.9765" in table  # retention 0.83 / 0.85
    assert (tmp_path / "report" / "sst2_sparsity_vs_metric.png").exists()


@pytest.mark.parametrize(
    "override, named",
    [
        ("trainer.max_steps=0", "trainer.max_steps=0"),
        ("student.max_steps=0", "student.max_steps=0"),
        ("teacher.batch_size=0", "teacher.batch_size=0"),
        ("student.batch_size=-4", "student.batch_size=-4"),
        ("teacher.epochs=0", "teacher.epochs=0"),
        ("student.epochs=2.5", "student.epochs=2.5"),
        ("student.epochs=-1", "student.epochs=-1"),  # no epoch limit and no step cap: forever
        ("task.max_train_samples=0", "task.max_train_samples=0"),
        ("task.max_eval_samples=-1", "task.max_eval_samples=-1"),
        ("student.max_train_samples=abc", "student.max_train_samples='abc'"),
        ("teacher.lr=0", "teacher.lr=0"),
        ("student.warmup_ratio=1.5", "student.warmup_ratio=1.5"),
        ("trainer.devices=0", "trainer.devices=0"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0"),
        ("pruner.frequency=0", "pruner.frequency=0"),
        ("pruner.beta=1.0", "pruner.beta=1.0"),
        ("distillation.temperature=0", "distillation.temperature=0"),
        ("task.datamodule.max_length=0", "task.datamodule.max_length=0"),
        ("compact.bench_batch=0", "compact.bench_batch=0"),
        ("compact.bench_seq_len=-1", "compact.bench_seq_len=-1"),
        ("compact.bench_extra_shapes=[[32,0]]", "compact.bench_extra_shapes="),
        ("compact.embedding_rank=0", "compact.embedding_rank=0"),
    ],
)
def test_bad_counts_and_sizes_are_refused_naming_the_setting(override, named, tmp_path):
    cfg = compose_config(["model=tiny", override], tmp_path)
    with pytest.raises(GrainError) as err:
        validate_config(cfg)
    message = str(err.value)
    assert message.startswith(named) and "\n" not in message
    assert "e.g." in message  # the fix: a value that works


def test_step_caps_and_sample_limits_accept_their_documented_values(tmp_path):
    for overrides in (
        ["trainer.max_steps=5", "student.max_steps=-1", "teacher.max_steps=null"],
        ["task.max_train_samples=null", "student.max_train_samples=16", "task.max_eval_samples=8"],
        ["student.epochs=-1", "student.max_steps=100"],
        ["compact.bench_batch=null", "compact.bench_extra_shapes=[[32,128],[1,16]]"],
    ):
        validate_config(compose_config(["model=tiny", *overrides], tmp_path))


def test_a_lightning_option_hydra_composes_with_plus_is_refused(tmp_path):
    """`+trainer.accumulate_grad_batches=4` (what Hydra's own error suggests) composed and never reached
    Lightning: refused, naming the settings grain passes and the batch size to raise instead."""
    with pytest.raises(GrainError) as err:
        validate_config(compose_config(["+trainer.accumulate_grad_batches=4"], tmp_path))
    message = str(err.value)
    assert message.startswith("+trainer.accumulate_grad_batches=4 is not a setting grain passes to Lightning: grain "
                              "does not accumulate gradients") and "student.batch_size" in message
    assert "trainer.devices" in message and "\n" not in message

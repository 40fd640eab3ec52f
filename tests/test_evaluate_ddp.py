"""Metrics under DDP: the compact stage evaluates on rank 0 alone (its metrics must not wait for other
ranks); validation splits each split over the processes and gathers the rows back."""

import json
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from grain.tasks.classification.metrics import ClassificationEvaluator
from tests.helpers.training import setup_parts


def _evaluate_on_rank0_only(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=timedelta(seconds=30)
    )
    if rank == 0:  # rank 1 has left, as after the prune stage
        evaluator = ClassificationEvaluator(num_labels=2)
        logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # predicts 1, 0, 0, 1
        evaluator.update({"labels": torch.tensor([1, 0, 1, 1])}, SimpleNamespace(logits=logits))
        Path(out_file).write_text(json.dumps(evaluator.compute()))
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes
def test_rank0_evaluates_alone_under_an_initialized_process_group(tmp_path):
    out_file = tmp_path / "metrics.json"
    mp.spawn(_evaluate_on_rank0_only, args=(str(tmp_path / "init"), str(out_file)), nprocs=2)
    metrics = json.loads(out_file.read_text())
    assert metrics["accuracy"] == 0.75
    assert abs(metrics["f1"] - 0.8) < 1e-6  # TP 2, FP 0, FN 1


# --- validation under DDP: every process logs the metrics of the whole split --------------------------

class SaveValidationMetrics(pl.Callback):
    def __init__(self, out_dir):
        self.out_dir = str(out_dir)

    def on_validation_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (Path(self.out_dir) / f"val_rank{trainer.global_rank}.json").write_text(json.dumps(metrics))


@pytest.mark.slow  # two spawned processes
def test_two_process_validation_logs_the_whole_split(tmp_path):
    """23 rows on 2 processes: before, each process logged the metric of its own half (and Lightning's
    sampler repeated a row to even the halves); now both log the single-process metric of all 23."""
    from grain.stages.prune import build_student_module
    from grain.tasks.evaluate import evaluate

    cfg, datamodule, teacher = setup_parts(tmp_path, ["task.max_eval_samples=23"])
    module = build_student_module(cfg, teacher, 2)
    trainer = pl.Trainer(
        accelerator="cpu", strategy="ddp_spawn", devices=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        callbacks=[SaveValidationMetrics(tmp_path)],
    )
    trainer.validate(module, datamodule=datamodule)
    datamodule.setup("validate")
    whole = evaluate(module.student, datamodule)
    assert len(datamodule.dataset("validation")) == 23
    for rank in (0, 1):
        logged = json.loads((tmp_path / f"val_rank{rank}.json").read_text())
        for name in ("accuracy", "f1"):
            assert abs(logged[f"student/validation/{name}"] - whole[f"validation/{name}"]) < 1e-6, (rank, name)


def _gather_rows(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=timedelta(seconds=30)
    )
    evaluator = _ner_evaluator()
    gold = _NER_GOLD[rank::2]  # each process holds every other sentence, as the unrepeated sampler deals them
    evaluator.update({"labels": torch.tensor(gold)}, SimpleNamespace(logits=_one_hot(_NER_PREDICTED[rank::2])))
    evaluator.gather()
    Path(f"{out_file}.{rank}").write_text(json.dumps(evaluator.compute()))
    dist.destroy_process_group()


_NER_TAGS = ["O", "B-PER", "I-PER", "B-LOC"]
_NER_GOLD = [[1, 2, 0, -100], [0, 3, 0, 0], [1, 0, 3, -100]]
_NER_PREDICTED = [[1, 2, 0, 0], [0, 0, 0, 0], [1, 0, 3, 0]]


def _ner_evaluator():
    from grain.tasks.token_classification.metrics import NEREvaluator

    return NEREvaluator(_NER_TAGS)


def _one_hot(ids):
    return torch.nn.functional.one_hot(torch.tensor(ids), len(_NER_TAGS)).float()


@pytest.mark.slow  # two spawned processes
def test_ner_rows_gathered_from_two_processes_score_as_one(tmp_path):
    single = _ner_evaluator()
    single.update({"labels": torch.tensor(_NER_GOLD)}, SimpleNamespace(logits=_one_hot(_NER_PREDICTED)))
    expected = single.compute()
    assert 0 < expected["f1"] < 1  # 2 of 3 gold entities found, no false ones
    out_file = tmp_path / "ner.json"
    mp.spawn(_gather_rows, args=(str(tmp_path / "init"), str(out_file)), nprocs=2)
    for rank in (0, 1):
        assert json.loads(Path(f"{out_file}.{rank}").read_text()) == expected

"""Under DDP the compact stage evaluates on rank 0 alone: its metrics must not wait for other ranks."""

import json
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from grain.metrics.classification import ClassificationEvaluator


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


def test_rank0_evaluates_alone_under_an_initialized_process_group(tmp_path):
    out_file = tmp_path / "metrics.json"
    mp.spawn(_evaluate_on_rank0_only, args=(str(tmp_path / "init"), str(out_file)), nprocs=2)
    metrics = json.loads(out_file.read_text())
    assert metrics["accuracy"] == 0.75
    assert abs(metrics["f1"] - 0.8) < 1e-6  # TP 2, FP 0, FN 1

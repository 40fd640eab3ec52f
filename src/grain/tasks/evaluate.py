"""Evaluate any model (teacher, masked student, compact model) on a task's eval splits."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from grain.models.backbone import eval_mode
from grain.tasks.base import model_inputs


@torch.inference_mode()
def evaluate(model: torch.nn.Module, datamodule, desc: str = "eval", splits: list[str] | None = None) -> dict[str, float]:
    """Return metrics keyed `<split>/<name>` (e.g. `validation/accuracy`) for every eval split (or `splits`)."""
    device = next(model.parameters()).device
    results: dict[str, float] = {}
    with eval_mode(model):
        for split in splits or datamodule.eval_splits:
            evaluator = datamodule.make_evaluator(split)
            batches = datamodule.eval_dataloader(split)
            for batch in tqdm(batches, desc=f"{desc} {split}", leave=False, disable=None):  # None: off where not a terminal
                inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
                evaluator.update(batch, model(**inputs))
            results.update({f"{split}/{name}": value for name, value in evaluator.compute().items()})
    return results

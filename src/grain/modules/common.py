"""Pieces the teacher and student LightningModules share: optimizer and per-split evaluation."""

from __future__ import annotations

import torch
from transformers import get_linear_schedule_with_warmup

from grain.tasks.base import model_inputs


def adamw_with_linear_schedule(
    params, lr: float, weight_decay: float, warmup_ratio: float, total_steps: int, eps: float = 1e-8
):
    """AdamW (`eps` added to the denominator; the official GRAIN scripts use 1e-6) with a linear
    warmup over `warmup_ratio` of `total_steps`, then a linear decay to 0, stepped every step.

    params: parameters, or param groups (dicts) whose own `weight_decay` overrides the default.
    """
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), max(total_steps, 1))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


NO_DECAY = ("bias", "LayerNorm.weight")  # airaria/GRAIN glue/main.py and squad/main.py `no_decay`


def decay_groups(named_params, weight_decay: float, no_decay_params=()) -> list[dict]:
    """Param groups as the official scripts: `weight_decay` on weights, none on biases and LayerNorm
    weights (names containing "bias" or "LayerNorm.weight"), nor on `no_decay_params` (the hidden
    projections, which the official adds as a group of their own with AdamW's default decay, 0)."""
    decay, no_decay = [], list(no_decay_params)
    for name, param in named_params:
        (no_decay if any(part in name for part in NO_DECAY) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class SplitEvaluation:
    """Mixin for LightningModules: runs the datamodule's evaluators over the validation loaders and
    logs `<prefix>/<split>/<metric>`. Needs `self.metric_prefix` and `self.eval_model()`.

    Under DDP every process validates its own part of each split; the evaluators gather the parts
    (`GatheredRows.gather`) before computing, so every process logs the metrics of the whole split."""

    def on_validation_epoch_start(self) -> None:
        datamodule = self.trainer.datamodule
        self._eval_splits = list(datamodule.eval_splits)
        self._evaluators = [datamodule.make_evaluator(split) for split in self._eval_splits]

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        outputs = self.eval_model()(**model_inputs(batch))
        self._evaluators[dataloader_idx].update(batch, outputs)

    def on_validation_epoch_end(self) -> None:
        for split, evaluator in zip(self._eval_splits, self._evaluators):
            if self.trainer.world_size > 1:
                evaluator.gather()
            for name, value in evaluator.compute().items():
                self.log(f"{self.metric_prefix}/{split}/{name}", value, prog_bar=split == "validation")

"""Pieces the teacher and student LightningModules share: optimizer and per-split evaluation."""

from __future__ import annotations

import torch
from transformers import get_linear_schedule_with_warmup

from grain.data.base import model_inputs


def adamw_with_linear_schedule(params, lr: float, weight_decay: float, warmup_ratio: float, total_steps: int):
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), max(total_steps, 1))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class SplitEvaluation:
    """Mixin for LightningModules: runs the datamodule's evaluators over the validation loaders and
    logs `<prefix>/<split>/<metric>`. Needs `self.metric_prefix` and `self.eval_model()`."""

    def on_validation_epoch_start(self) -> None:
        datamodule = self.trainer.datamodule
        self._eval_splits = list(datamodule.eval_splits)
        self._evaluators = [datamodule.make_evaluator(split) for split in self._eval_splits]

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        outputs = self.eval_model()(**model_inputs(batch))
        self._evaluators[dataloader_idx].update(batch, outputs)

    def on_validation_epoch_end(self) -> None:
        for split, evaluator in zip(self._eval_splits, self._evaluators):
            for name, value in evaluator.compute().items():
                self.log(f"{self.metric_prefix}/{split}/{name}", value, prog_bar=split == "validation")

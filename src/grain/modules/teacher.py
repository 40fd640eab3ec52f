"""Teacher LightningModule: plain fine-tuning of a backbone on the task."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from grain.modules.common import SplitEvaluation, adamw_with_linear_schedule
from grain.tasks.base import model_inputs


class TeacherModule(SplitEvaluation, pl.LightningModule):
    metric_prefix = "teacher"

    def __init__(self, model, lr: float, weight_decay: float, warmup_ratio: float, seed: int = 0):
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode; fine-tuning uses dropout
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio
        self.seed = seed

    def eval_model(self):
        return self.model

    def training_step(self, batch, batch_idx):
        # Dropout draws from a generator seeded by (seed, rank, step): a fine-tuning resumed from a checkpoint
        # replays the same randomness as an uninterrupted one, so it ends with the same weights.
        torch.manual_seed(self.seed * 1_000_003 + self.global_rank * 10_007 + self.global_step)
        loss = self.model(**model_inputs(batch, with_labels=True)).loss
        self.log("teacher/train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return adamw_with_linear_schedule(
            self.model.parameters(), self.lr, self.weight_decay, self.warmup_ratio,
            int(self.trainer.estimated_stepping_batches),
        )

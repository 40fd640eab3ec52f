"""The student's parts on model=tiny and SST-2's fixture (config, data module, teacher), and a quiet
Lightning trainer for them."""

from __future__ import annotations

import lightning.pytorch as pl
from transformers import AutoModelForSequenceClassification

from grain.models.backbone import load_task_model, load_tokenizer
from grain.stages.trainer import build_datamodule
from tests.helpers.configs import compose_config

# 64 examples / 8 a batch = 8 steps an epoch, 24 in all; pruning over steps 5..14 (0.2 and 0.6 of 24)
STUDENT_OVERRIDES = [
    "task=sst2", "model=tiny", "sparsity=0.6", "student.epochs=3", "student.batch_size=8",
    "student.init=teacher", "pruner.start=0.2", "pruner.end=0.6", "pruner.beta=0.9", "trainer.log_every_n_steps=1",
]


def setup_parts(tmp_path, overrides=()):
    """(config, data module, teacher) of a student run: STUDENT_OVERRIDES, then `overrides`."""
    cfg = compose_config(STUDENT_OVERRIDES + list(overrides), tmp_path)
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    datamodule = build_datamodule(cfg, tokenizer, cfg.student.batch_size, None)
    teacher = load_task_model(cfg.model, AutoModelForSequenceClassification, 2)
    return cfg, datamodule, teacher


def make_trainer(tmp_path, max_epochs=3, max_steps=-1, callbacks=(), devices=1, **kwargs):
    """A CPU Lightning trainer without logger, progress bar, validation or (unless asked) checkpointing."""
    kwargs.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        accelerator="cpu", devices=devices, max_epochs=max_epochs, max_steps=max_steps, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(tmp_path), callbacks=list(callbacks),
        **kwargs,
    )

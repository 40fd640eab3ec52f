"""Building Lightning Trainers and DataModules from the config, the same way for every stage."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig

from grain.stopping import StopCallback


def build_datamodule(cfg: DictConfig, tokenizer, batch_size: int, max_train_samples):
    """Instantiate `task.datamodule` with the run's paths, seed and the stage's batch/subset sizes."""
    return hydra.utils.instantiate(
        cfg.task.datamodule,
        tokenizer=tokenizer,
        data_dir=cfg.paths.data_dir,
        cache_dir=cfg.paths.cache_dir,
        batch_size=batch_size,
        max_train_samples=max_train_samples,
        max_eval_samples=cfg.task.max_eval_samples,
        seed=cfg.seed,
        num_workers=cfg.trainer.num_workers,
        _convert_="all",
    )


def stage_steps(stage_cfg: DictConfig, trainer_cfg: DictConfig) -> int:
    """The stage's max_steps, capped by trainer.max_steps when that is set (> 0)."""
    caps = [s for s in (stage_cfg.max_steps, trainer_cfg.max_steps) if s is not None and s > 0]
    return min(caps) if caps else -1


def build_trainer(cfg: DictConfig, stage_cfg: DictConfig, run_dir: Path, logger, callbacks=(), **overrides):
    t = cfg.trainer
    kwargs = dict(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=stage_cfg.epochs,
        max_steps=stage_steps(stage_cfg, t),
        logger=logger if logger is not None else False,
        log_every_n_steps=t.log_every_n_steps,
        num_sanity_val_steps=0,
        deterministic=t.deterministic,
        default_root_dir=str(run_dir),
        callbacks=[*callbacks, StopCallback()],
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        enable_model_summary=False,
    )
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)

"""What every training stage shares: the task data module and the Lightning Trainer built from the
config, progress lines, and periodic atomic checkpoints."""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
import weakref
from pathlib import Path

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from omegaconf import DictConfig

from grain.errors import writing
from grain.stopping import StopCallback

log = logging.getLogger(__name__)
PROGRESS_MODES = ("auto", "bar", "log", "none")


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


class ProgressLog(pl.Callback):
    """A log line at the first step, then every `every_s` seconds, and at the end of training: what a
    progress bar cannot show where the output is not a terminal (`make run > log`, a SLURM job)."""

    def __init__(self, stage: str, every_s: float = 30.0):
        self.stage = stage
        self.every_s = float(every_s)
        self.started = self.last = 0.0

    def on_train_start(self, trainer, pl_module):
        self.started = self.last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.monotonic()
        if trainer.global_step == 1 or now - self.last >= self.every_s:
            self.last = now
            log.info(self.line(trainer, now))

    def on_train_end(self, trainer, pl_module):
        log.info("%s: trained %d steps in %.0f s", self.stage, trainer.global_step, time.monotonic() - self.started)

    def line(self, trainer, now: float) -> str:
        step, elapsed = trainer.global_step, max(now - self.started, 1e-9)
        total = planned_steps(trainer)
        parts = [f"{self.stage}: step {step}" + (f"/{total} ({100 * step / total:.0f}%)" if total else "")]
        if trainer.max_epochs and trainer.max_epochs > 0 and not (trainer.max_steps and trainer.max_steps > 0):
            parts.append(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")  # epochs bind, not a step cap
        for name, value in sorted(trainer.progress_bar_metrics.items()):
            if "loss" in name:
                parts.append(f"{name} {float(value):.4f}")
        parts.append(f"{step / elapsed:.2f} steps/s")
        if total and step:
            parts.append(f"{(total - step) * elapsed / step / 60:.1f} min left")
        return ", ".join(parts)


def planned_steps(trainer) -> int | None:
    """The optimizer steps the fit will run: Lightning's estimate (max_steps, or epochs x batches), None
    where it has none (an iterable without a length)."""
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # no estimate
        return None
    return int(total) if math.isfinite(total) else None


class StepProgressBar(TQDMProgressBar):
    """Lightning's progress bar over the optimizer steps the stage will run (`student: 12/30`), instead
    of one bar per epoch whose title counts epochs the step cap never reaches (`Epoch 0/19`)."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.train_progress_bar.reset(total=planned_steps(trainer))
        self.train_progress_bar.set_description(self.stage)

    def on_train_epoch_start(self, trainer, *_) -> None:
        pass  # one bar for the whole stage

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if not bar.disable and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


def progress_settings(trainer_cfg: DictConfig, stage: str) -> dict:
    """A progress bar on a terminal; elsewhere (or with trainer.progress=log) a log line every
    trainer.progress_seconds."""
    mode = trainer_cfg.get("progress", "auto")
    if mode == "auto":
        mode = "bar" if sys.stdout.isatty() else "log"
    if mode == "bar":
        return {"enable_progress_bar": True, "callbacks": [StepProgressBar(stage)]}
    callbacks = [ProgressLog(stage, trainer_cfg.get("progress_seconds", 30))] if mode == "log" else []
    return {"enable_progress_bar": False, "callbacks": callbacks}


def build_trainer(cfg: DictConfig, stage_cfg: DictConfig, run_dir: Path, logger, callbacks=(), **overrides):
    t = cfg.trainer
    progress = progress_settings(t, Path(run_dir).name)
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
        callbacks=[*callbacks, StopCallback(), *progress["callbacks"]],
        enable_progress_bar=progress["enable_progress_bar"],
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        enable_model_summary=False,
    )
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


STALE_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")  # `.<file>.<pid>.tmp`, as PeriodicCheckpoint writes them


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files a killed save left in `directory` (`.<file>.<pid>.tmp` whose process is
    gone: a kill during a checkpoint write leaves one as large as the checkpoint); returns them."""
    removed = []
    for path in sorted(Path(directory).glob(".*.tmp")):
        match = STALE_TEMPORARY.match(path.name)
        if match is None or int(match.group(1)) == os.getpid() or process_alive(int(match.group(1))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
        log.info("removed %s, left by a save that was interrupted", path)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class PeriodicCheckpoint(ModelCheckpoint):
    """`checkpoints/last.ckpt`, rewritten every `every_n_steps` optimizer steps and/or every `every_minutes`
    minutes of training, and at the end of the stage; a resume from it continues the run exactly (the
    training loader's position is in it: grain.tasks.sampler).

    The student optimizes manually, where Lightning's ModelCheckpoint ignores `train_time_interval` and
    warns at every step-triggered save; this class decides itself. Each save is atomic: written to a
    temporary file in the same directory, flushed to disk, then renamed over last.ckpt (Lightning's own
    save goes through a temporary file in the system temp dir and `shutil.move`, which copies in place
    when that is another file system, so a kill during the copy would leave a truncated last.ckpt)."""

    def __init__(self, dirpath, every_n_steps: int | None = None, every_minutes: float | None = None):
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, enable_version_counter=False)
        self.every_n_steps = int(every_n_steps) if every_n_steps else 0
        self.every_seconds = float(every_minutes) * 60 if every_minutes else None
        self._last_save_time: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_save_time = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = bool(self.every_n_steps) and step > 0 and step % self.every_n_steps == 0
        if self.every_seconds is not None:
            now = time.monotonic()
            late = self._last_save_time is not None and now - self._last_save_time >= self.every_seconds
            due = due or bool(trainer.strategy.broadcast(late))  # rank 0 decides: every rank must save
        if not due or self._should_skip_saving_checkpoint(trainer):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_save_time = time.monotonic()

    def on_train_end(self, trainer, pl_module) -> None:
        # ModelCheckpoint saves here only when nothing was saved before; the stage's end is always saved
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            remove_stale_temporaries(Path(self.dirpath))

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        path = Path(filepath)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with writing(path):
            trainer.save_checkpoint(temporary, self.save_weights_only)  # every rank calls; rank 0 writes
            if trainer.is_global_zero:
                with open(temporary, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(temporary, path)
                directory = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
        trainer.strategy.barrier("PeriodicCheckpoint.replace")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = str(path)
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.after_save_checkpoint(weakref.proxy(self))

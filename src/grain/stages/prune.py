"""Prune stage: distil a student from the teacher while the controller prunes it to the target."""

from __future__ import annotations

import copy
import logging
import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig
from safetensors.torch import save_file

from grain.config import CHECKPOINT_SETTINGS_KEY, resume_settings
from grain.errors import GrainError
from grain.models.backbone import load_task_model
from grain.models.masks import EncoderShape
from grain.models.slicing import factorize_input_embeddings
from grain.modules.student import StudentModule
from grain.pruning.controller import PruningController
from grain.stages.teacher import name_labels
from grain.tasks.base import task_class
from grain.tasks.evaluate import evaluate
from grain.training import build_datamodule, build_trainer
from grain.viz import plot_structure

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    student: object
    controller: PruningController
    summary: dict
    datamodule: object


def build_latency_model(cfg: DictConfig, student):
    """The measured latency model of `student`'s compact form on the device and shape the compact
    stage benchmarks (cached in paths.cache_dir); None without a speedup target."""
    if cfg.get("speedup") is None:
        return None
    from grain.bench.latency_model import latency_model
    from grain.stages.compact import bench_shapes, serving_device

    device = serving_device(cfg.trainer)
    batch, seq_len = bench_shapes(cfg.compact, device)[0]
    return latency_model(student.config, device, batch, seq_len, Path(cfg.paths.cache_dir), progress=log.info)


def build_controller(cfg: DictConfig, student) -> PruningController:
    p = cfg.pruner
    return PruningController(
        EncoderShape.of(student),
        target_sparsity=cfg.sparsity,
        units=p.units,
        score=p.score,
        beta=p.beta,
        alpha_head=p.alpha_head,
        alpha_layer=p.alpha_layer,
        structure_reg=p.structure_reg,
        start=p.start,
        end=p.end,
        frequency=p.frequency,
        seed=cfg.seed,
        budget=p.get("budget", "grain"),
        cost=p.get("cost", "params"),
        target_speedup=cfg.get("speedup"),
        latency_model=build_latency_model(cfg, student),
    )


def init_student(cfg: DictConfig, teacher, num_labels):
    """The student before distillation: a copy of the teacher or the pre-trained backbone with the
    task's head (`num_labels` outputs), its word embeddings factorized with student.embedding_rank."""
    if cfg.student.init == "teacher":
        student = copy.deepcopy(teacher).requires_grad_(True)  # the teacher itself is frozen
    else:
        student = load_task_model(cfg.model, task_class(cfg).auto_model_class, num_labels)
    rank = cfg.student.get("embedding_rank")
    if rank:  # the official recipe: word embeddings factorized (truncated SVD) before distillation, trained so
        size = student.get_input_embeddings().embedding_dim
        if rank >= size:
            raise GrainError(
                f"student.embedding_rank={rank} is not below the word embedding size {size} of model={cfg.model.name}; "
                f"give a smaller rank (e.g. student.embedding_rank={max(1, size // 4)}) or null (no factorization)"
            )
        factorize_input_embeddings(student, int(rank))
    return student


def build_student_module(cfg: DictConfig, teacher, num_labels) -> StudentModule:
    """The prune stage's LightningModule for the run `cfg`: student, controller, the task's KD."""
    student = init_student(cfg, teacher, num_labels).train()
    return StudentModule(
        student,
        teacher,
        build_controller(cfg, student),
        task=task_class(cfg),
        distill_cfg=dict(cfg.distillation),
        optim_cfg={k: cfg.student[k] for k in ("lr", "weight_decay", "warmup_ratio", "max_grad_norm", "adam_eps")},
        gradient_separation=cfg.pruner.gradient_separation,
        compact_after_end=cfg.pruner.compact_after_end,
        seed=cfg.seed,
    )


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

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        path = Path(filepath)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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


class RecordSettings(pl.Callback):
    """Stores the run's settings in every checkpoint, so that a resume from another run's checkpoint is
    refused (config.validate_checkpoint compares them)."""

    def __init__(self, settings: dict):
        self.settings = settings

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_SETTINGS_KEY] = dict(self.settings)


def run_prune_stage(cfg: DictConfig, tokenizer, teacher, run_dir: Path, logger) -> PruneResult:
    datamodule = build_datamodule(cfg, tokenizer, cfg.student.batch_size, cfg.student.max_train_samples)
    module = build_student_module(cfg, teacher, datamodule.num_labels)
    name_labels(module.student, datamodule.labels)  # the compact model inherits them
    checkpoints = PeriodicCheckpoint(
        run_dir / "checkpoints",
        every_n_steps=cfg.student.get("checkpoint_every_n_steps"),
        every_minutes=cfg.student.get("checkpoint_every_minutes"),
    )
    callbacks = [checkpoints, RecordSettings(resume_settings(cfg))]
    trainer = build_trainer(cfg, cfg.student, run_dir / "student", logger, callbacks=callbacks)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    train_seconds = time.perf_counter() - started

    controller, student = module.controller, module.student
    metrics = evaluate(student, datamodule, "student (masked)")
    structure = controller.structure()
    summary = {
        "metric": metrics.get(f"validation/{cfg.task.metric}"),
        "metrics": metrics,
        "sparsity": controller.sparsity(),
        "target_sparsity": None if cfg.get("speedup") is not None else float(cfg.sparsity),
        **structure,
        "train_seconds": train_seconds,
        "steps": int(controller.step),
    }
    if controller.latency_model is not None:
        summary.update(target_speedup=controller.target_speedup, predicted_speedup=controller.predicted_speedup(),
                       cost=controller.cost)
    if trainer.is_global_zero:
        save_file({k: v.contiguous().cpu() for k, v in controller.masks().items()}, str(run_dir / "masks.safetensors"))
        plot_structure(
            {**structure, "head_dim": controller.shape.head_dim},
            run_dir / "structure.png",
            title=f"{cfg.task.name} {cfg.model.name} sparsity {summary['sparsity']:.3f}",
        )
    return PruneResult(student, controller, summary, datamodule)

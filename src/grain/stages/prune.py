"""Prune stage: distil a student from the teacher while the controller prunes it to the target."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from safetensors.torch import save_file

from grain.errors import GrainError, writing
from grain.measure.compare import bench_shapes, serving_device
from grain.measure.latency_model import check_reachable, latency_model
from grain.models.backbone import load_task_model, name_labels, set_dropout
from grain.models.layer_drop import keep_layers
from grain.models.masks import EncoderShape
from grain.models.slicing import factorize_input_embeddings
from grain.modules.student import StudentModule
from grain.pruning.controller import PruningController
from grain.stages.resume import RecordSettings, resume_settings
from grain.stages.trainer import PeriodicCheckpoint, build_datamodule, build_trainer, remove_stale_temporaries
from grain.target import Target
from grain.tasks.base import task_class
from grain.tasks.evaluate import evaluate
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
    if Target.of(cfg).speedup is None:
        return None
    device = serving_device(cfg.trainer)
    batch, seq_len = bench_shapes(cfg.compact, device)[0]
    model = latency_model(student.config, device, batch, seq_len, Path(cfg.paths.cache_dir),
                          min_run_time=float(cfg.compact.get("latency_seconds", 0.1)), progress=log.info)
    check_reachable(model, Target.of(cfg).speedup)  # before the student trains
    return model


def build_controller(cfg: DictConfig, student) -> PruningController:
    p, target = cfg.pruner, Target.of(cfg)
    return PruningController(
        EncoderShape.of(student),
        target_sparsity=target.sparsity,
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
        target_speedup=target.speedup,
        latency_model=build_latency_model(cfg, student),
    )


def init_student(cfg: DictConfig, teacher, num_labels):
    """The student before distillation: a copy of the teacher or the pre-trained backbone with the
    task's head (`num_labels` outputs), only the layers student.keep_layers names (the layer-dropping
    baseline; null: all), its word embeddings factorized with student.embedding_rank, its dropout at
    student.dropout (null: the model's own)."""
    if cfg.student.init == "teacher":
        student = copy.deepcopy(teacher).requires_grad_(True)  # the teacher itself is frozen
    else:
        task = task_class(cfg)
        student = load_task_model(cfg.model, task.auto_model_class, num_labels, head_settings=task.head_settings)
    keep = cfg.student.get("keep_layers")
    if keep:  # the layer-dropping baseline: some of the teacher's layers, distilled as the others
        keep_layers(student, list(keep))
    rank = cfg.student.get("embedding_rank")
    if rank:  # the official recipe: word embeddings factorized (truncated SVD) before distillation, trained so
        size = student.get_input_embeddings().embedding_dim
        if rank >= size:
            raise GrainError(
                f"student.embedding_rank={rank} is not below the word embedding size {size} of model={cfg.model.name}; "
                f"give a smaller rank (e.g. student.embedding_rank={max(1, size // 4)}) or null (no factorization)"
            )
        factorize_input_embeddings(student, int(rank))
    if cfg.student.get("dropout") is not None:
        set_dropout(student, cfg.student.dropout)
    return student


def build_student_module(cfg: DictConfig, teacher, num_labels, task=None) -> StudentModule:
    """The prune stage's LightningModule for the run `cfg`: student, controller, the task's KD (`task`:
    the run's data module, which a task distilling embeddings needs for its pooling; default its class)."""
    student = init_student(cfg, teacher, num_labels).train()
    return StudentModule(
        student,
        teacher,
        build_controller(cfg, student),
        task=task if task is not None else task_class(cfg),
        distill_cfg=dict(cfg.distillation),
        optim_cfg={k: cfg.student[k] for k in ("lr", "weight_decay", "warmup_ratio", "max_grad_norm", "adam_eps")},
        kept_layers=list(cfg.student.keep_layers) if cfg.student.get("keep_layers") else None,
        gradient_separation=cfg.pruner.gradient_separation,
        compact_after_end=cfg.pruner.compact_after_end,
        seed=cfg.seed,
    )


def of_teacher(sparsity: float, depth: float) -> float:
    """A student's sparsity among its own layers' parameters as a sparsity of the teacher's: the student
    keeps `depth` of the teacher's layers (1 unless layers were dropped, student.keep_layers), and every
    layer holds as many prunable (or linear) parameters, so 1 - (1 - sparsity) x depth of them are gone."""
    return 1.0 - (1.0 - sparsity) * depth


def run_prune_stage(cfg: DictConfig, tokenizer, teacher, run_dir: Path, logger) -> PruneResult:
    datamodule = build_datamodule(cfg, tokenizer, cfg.student.batch_size, cfg.student.max_train_samples)
    module = build_student_module(cfg, teacher, datamodule.num_labels, task=datamodule)
    name_labels(module.student, datamodule.labels)  # the compact model inherits them
    checkpoints = PeriodicCheckpoint(
        run_dir / "checkpoints",
        every_n_steps=cfg.student.get("checkpoint_every_n_steps"),
        every_minutes=cfg.student.get("checkpoint_every_minutes"),
    )
    if cfg.ckpt_path:  # the run it resumes may have been killed while saving: its leftovers go
        remove_stale_temporaries(Path(str(cfg.ckpt_path)).expanduser().parent)
    callbacks = [checkpoints, RecordSettings(resume_settings(cfg))]
    trainer = build_trainer(cfg, cfg.student, run_dir / "student", logger, callbacks=callbacks)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    train_seconds = time.perf_counter() - started

    controller, student = module.controller, module.student
    metrics = evaluate(student, datamodule, "student (masked)")
    structure = controller.structure()
    # the student's layers of the teacher's: below 1 only for the layer-dropping baseline (student.keep_layers)
    depth = controller.shape.num_layers / EncoderShape.of(teacher).num_layers
    summary = {
        "metric": metrics.get(f"validation/{cfg.task.metric}"),
        "metrics": metrics,
        "sparsity": of_teacher(controller.sparsity(), depth),
        "encoder_linear_sparsity": of_teacher(controller.encoder_linear_sparsity(), depth),
        "target_sparsity": Target.of(cfg).sparsity if cfg.pruner.units != "none" else None,  # pruner=none: no target
        **structure,
        "train_seconds": train_seconds,
        "steps": int(controller.step),
    }
    if controller.latency_model is not None:
        summary.update(target_speedup=controller.target_speedup, predicted_speedup=controller.predicted_speedup(),
                       cost=controller.cost, latency_model=controller.latency_model.measurement)
    if trainer.is_global_zero:
        with writing(run_dir / "masks.safetensors"):
            save_file({k: v.contiguous().cpu() for k, v in controller.masks().items()}, str(run_dir / "masks.safetensors"))
        with writing(run_dir / "structure.png"):
            plot_structure(
                {**structure, "head_dim": controller.shape.head_dim},
                run_dir / "structure.png",
                title=f"{cfg.task.name} {cfg.model.name} {Target.of(cfg)}, sparsity {summary['sparsity']:.3f}",
            )
    return PruneResult(student, controller, summary, datamodule)

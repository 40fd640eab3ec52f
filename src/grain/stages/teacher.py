"""Teacher stage: use a given fine-tuned model, reuse a cached one, or fine-tune and cache it."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from grain.data.base import fingerprint
from grain.metrics.evaluate import evaluate
from grain.models.backbone import load_task_model
from grain.modules.teacher import TeacherModule
from grain.training import build_datamodule, build_trainer, stage_steps

META_FILE = "grain_teacher.json"


@dataclass
class TeacherResult:
    model: object
    path: str
    metrics: dict
    train_seconds: float
    cached: bool


def teacher_cache_dir(cfg: DictConfig, datamodule) -> Path:
    """Cache key: everything that changes the fine-tuned weights (model, task data, settings, seed)."""
    key = fingerprint(
        cfg.model.pretrained,
        OmegaConf.to_container(cfg.model, resolve=True),
        OmegaConf.to_container(cfg.task.datamodule, resolve=True),
        datamodule.source_signature("train"),
        OmegaConf.to_container(cfg.teacher, resolve=True),
        stage_steps(cfg.teacher, cfg.trainer),
        cfg.trainer.precision,
        cfg.seed,
    )
    return Path(cfg.paths.cache_dir) / "teachers" / f"{cfg.task.name}-{cfg.model.name}-{key}"


def run_teacher_stage(cfg: DictConfig, tokenizer, run_dir: Path, logger) -> TeacherResult:
    datamodule = build_datamodule(cfg, tokenizer, cfg.teacher.batch_size, cfg.teacher.max_train_samples)
    num_labels = getattr(datamodule, "num_labels", None)
    if cfg.teacher.path:
        model = load_task_model(cfg.model, cfg.task.type, num_labels, path=str(cfg.teacher.path))
        datamodule.setup("validate")
        return TeacherResult(model, str(cfg.teacher.path), evaluate(model, datamodule, "teacher"), 0.0, cached=False)

    cache_dir = teacher_cache_dir(cfg, datamodule)
    meta_path = cache_dir / META_FILE
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        model = load_task_model(cfg.model, cfg.task.type, num_labels, path=str(cache_dir))
        return TeacherResult(model, str(cache_dir), meta["metrics"], meta["train_seconds"], cached=True)

    model = load_task_model(cfg.model, cfg.task.type, num_labels)
    module = TeacherModule(model, cfg.teacher.lr, cfg.teacher.weight_decay, cfg.teacher.warmup_ratio)
    trainer = build_trainer(cfg, cfg.teacher, run_dir / "teacher", logger)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    train_seconds = time.perf_counter() - started
    metrics = evaluate(model, datamodule, "teacher")
    save_teacher(model, tokenizer, cache_dir, {"metrics": metrics, "train_seconds": train_seconds})
    return TeacherResult(model, str(cache_dir), metrics, train_seconds, cached=False)


@rank_zero_only
def save_teacher(model, tokenizer, cache_dir: Path, meta: dict) -> None:
    """Write into a temporary dir, then rename: an interrupted save never looks like a cached teacher."""
    tmp = cache_dir.with_name(cache_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # safetensors
    tokenizer.save_pretrained(tmp)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(cache_dir, ignore_errors=True)
    tmp.rename(cache_dir)

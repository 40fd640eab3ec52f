"""Teacher stage: use a given fine-tuned model (or the backbone itself, for a task whose teacher it is),
reuse a cached one, or fine-tune and cache it."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig

from grain.errors import GrainError, writing
from grain.models.backbone import load_task_model, name_labels, resolve_pretrained
from grain.models.probe import WEIGHT_FILES
from grain.modules.teacher import TeacherModule
from grain.stages.trainer import PeriodicCheckpoint, build_datamodule, build_trainer, stage_steps
from grain.tasks.cache import file_signature, fingerprint
from grain.tasks.evaluate import evaluate

META_FILE = "grain_teacher.json"
log = logging.getLogger(__name__)


@dataclass
class TeacherResult:
    model: object
    path: str
    metrics: dict
    train_seconds: float
    cached: bool


# Teacher settings that do not change the fine-tuned weights: left out of the cache key.
KEY_FREE_SETTINGS = ("checkpoint_every_n_steps", "checkpoint_every_minutes")


def teacher_cache_dir(cfg: DictConfig, datamodule) -> Path:
    """Cache key: everything that changes the fine-tuned weights (the backbone's content, not only its
    name or path; task data; settings; seed)."""
    teacher = {k: v for k, v in OmegaConf.to_container(cfg.teacher, resolve=True).items() if k not in KEY_FREE_SETTINGS}
    key = fingerprint(
        cfg.model.pretrained,
        backbone_signature(str(cfg.model.pretrained)),
        OmegaConf.to_container(cfg.model, resolve=True),
        OmegaConf.to_container(cfg.task.datamodule, resolve=True),
        datamodule.source_signature("train"),
        teacher,
        stage_steps(cfg.teacher, cfg.trainer),
        cfg.trainer.precision,
        cfg.seed,
    )
    return Path(cfg.paths.cache_dir) / "teachers" / f"{cfg.task.name}-{cfg.model.name}-{key}"


def backbone_signature(pretrained: str) -> list:
    """What identifies a backbone's weights: the content hashes of a local model directory's config and
    weight files (another model saved at the same path is another teacher), or [] for a hub name or a
    random model (a hub name identifies its weights)."""
    directory = Path(resolve_pretrained(pretrained)).expanduser() if pretrained != "random" else None
    if directory is None or not (directory / "config.json").is_file():
        return []
    files = [directory / "config.json", *(f for pattern in WEIGHT_FILES for f in sorted(directory.glob(pattern)))]
    return [file_signature(f) for f in files]


def partial_dir(cache_dir: Path) -> Path:
    """Where a teacher's fine-tuning keeps its checkpoint until it is cached (beside its cache dir)."""
    return cache_dir.with_name(cache_dir.name + ".partial")


def resume_from(run_dir: Path, partial: Path) -> str | None:
    """The checkpoint a teacher's fine-tuning resumes from: none under SLURM when a requeue saved one in
    the run's stage dir (Lightning resumes from it, the newest), else the partial dir's last.ckpt."""
    if SLURMEnvironment.detect() and any((run_dir / "teacher").glob("hpc_ckpt_*.ckpt")):
        return None
    last = partial / "last.ckpt"
    return str(last) if last.is_file() else None


def run_teacher_stage(cfg: DictConfig, tokenizer, run_dir: Path, logger) -> TeacherResult:
    datamodule = build_datamodule(cfg, tokenizer, cfg.teacher.batch_size, cfg.teacher.max_train_samples)
    head, num_labels = datamodule.auto_model_class, datamodule.num_labels
    labels = datamodule.labels  # the task's label names, where its head has named outputs
    if cfg.teacher.path:
        order = check_given_teacher(str(cfg.teacher.path), head, labels, cfg.task.name)
        try:
            model = load_task_model(cfg.model, head, num_labels, path=str(cfg.teacher.path),
                                    head_settings=datamodule.head_settings)
        except GrainError as err:
            raise GrainError(f"teacher.path={cfg.teacher.path}: {err}") from err
        if order is not None:
            reorder_label_rows(model, order)
        name_labels(model, labels)
        datamodule.setup("validate")
        return TeacherResult(model, str(cfg.teacher.path), evaluate(model, datamodule, "teacher"), 0.0, cached=False)

    if datamodule.teacher_is_backbone:  # a sentence-transformers model: the teacher as given, nothing to fine-tune
        model = load_task_model(cfg.model, head, num_labels, head_settings=datamodule.head_settings)
        datamodule.setup("validate")
        return TeacherResult(model, str(cfg.model.pretrained), evaluate(model, datamodule, "teacher"), 0.0, cached=False)

    cache_dir = teacher_cache_dir(cfg, datamodule)
    if (cache_dir / META_FILE).exists():
        meta, model = load_cached_teacher(cfg, cache_dir, head, num_labels)
        name_labels(model, labels)
        datamodule.setup("validate")  # this run's evaluation set, not the one of the run that cached it
        metrics = evaluate(model, datamodule, "teacher (cached)")
        return TeacherResult(model, str(cache_dir), metrics, meta.get("train_seconds", 0.0), cached=True)

    model = load_task_model(cfg.model, head, num_labels, head_settings=datamodule.head_settings)
    name_labels(model, labels)  # the cached teacher and the models made from it carry the task's names
    module = TeacherModule(model, cfg.teacher.lr, cfg.teacher.weight_decay, cfg.teacher.warmup_ratio, seed=cfg.seed)
    partial = partial_dir(cache_dir)
    checkpoints = PeriodicCheckpoint(
        partial, every_n_steps=cfg.teacher.get("checkpoint_every_n_steps"),
        every_minutes=cfg.teacher.get("checkpoint_every_minutes"),
    )
    trainer = build_trainer(cfg, cfg.teacher, run_dir / "teacher", logger, callbacks=[checkpoints])
    ckpt_path = resume_from(run_dir, partial)
    if ckpt_path:
        log.info("teacher: resuming its fine-tuning from %s", ckpt_path)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - started
    metrics = evaluate(model, datamodule, "teacher")
    save_teacher(model, tokenizer, cache_dir, {"metrics": metrics, "train_seconds": train_seconds})
    if trainer.is_global_zero:
        shutil.rmtree(partial, ignore_errors=True)  # cached now: its checkpoint has done its job
    return TeacherResult(model, str(cache_dir), metrics, train_seconds, cached=False)


def _label_key(name) -> str:
    """A label name as compared: case and spaces aside, and LABEL_3 as 3."""
    key = str(name).strip().lower()
    return key[len("label_"):] if re.fullmatch(r"label_\d+", key) else key


def check_given_teacher(path: str, auto_model_class: type, labels: list[str] | None, task_name: str) -> list[int] | None:
    """A given teacher (teacher.path) must have the task's head (`auto_model_class`, by the class its config
    names: a token classifier loaded for a sentence task got a new, untrained head) and its labels
    (`teacher_label_order`); returns the row order of its classifier for the task's labels (None: as is).
    Raises GrainError naming the path, what it has and what the task needs."""
    config = teacher_config(path)
    needed = auto_model_class.__name__.removeprefix("AutoModel")  # e.g. ForSequenceClassification
    heads = [name for name in (config.architectures or []) if "For" in name]
    if heads and not any(name.endswith(needed) for name in heads):
        has = heads[0][heads[0].index("For"):]
        raise GrainError(
            f"teacher.path={path} is a {heads[0]} (a {has[3:]} head) and task={task_name} needs a {needed[3:]} head; "
            f"give a teacher fine-tuned for this kind of task, or drop teacher.path to fine-tune one"
        )
    return teacher_label_order(path, labels, task_name, config) if labels else None


def teacher_config(path: str):
    """The given teacher's HF config; GrainError where it cannot be loaded."""
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GrainError(f"teacher.path={path}: its config cannot be loaded ({reason}); give a directory saved "
                         f"with save_pretrained or a hub name") from None


def teacher_label_order(path: str, labels: list[str], task_name: str, config=None) -> list[int] | None:
    """The row of the given teacher's classifier for each of the task's labels, matched by name
    (None: already in the task's order). Names that say nothing (LABEL_0.., or a task whose labels
    are codes such as SST-2's 0/1) are taken in order when the counts agree; otherwise refused."""
    config = config if config is not None else teacher_config(path)
    saved = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
    saved_keys, task_keys = [_label_key(n) for n in saved], [_label_key(n) for n in labels]
    if sorted(saved_keys) == sorted(task_keys) and len(set(saved_keys)) == len(saved_keys):
        order = [saved_keys.index(key) for key in task_keys]
        return None if order == list(range(len(order))) else order
    uninformative = all(k.isdigit() for k in saved_keys) or all(k.isdigit() for k in task_keys)
    if uninformative and len(saved) == len(labels):
        return None
    raise GrainError(
        f"teacher.path={path} predicts the labels {saved} and task {task_name} has {list(labels)}; give a teacher "
        f"fine-tuned on {task_name} (its config.json id2label naming the same labels), or drop teacher.path to "
        f"fine-tune one"
    )


def reorder_label_rows(model, order: list[int]) -> None:
    """Put the classifier's output rows in the task's label order (row i = the task's label i)."""
    num_labels = len(order)
    base = model.base_model_prefix
    heads = [
        module for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.out_features == num_labels and not name.startswith(base + ".")
    ]
    if len(heads) != 1:
        raise GrainError(f"cannot find the classifier of {type(model).__name__} to put its labels in the task's order")
    head = heads[-1]
    index = torch.tensor(order)
    with torch.no_grad():
        head.weight.copy_(head.weight[index])
        if head.bias is not None:
            head.bias.copy_(head.bias[index])


def load_cached_teacher(cfg: DictConfig, cache_dir: Path, auto_cls: type, num_labels: int | None):
    """The cached teacher (built with the task's `auto_cls` head) and its metadata; a damaged cache is
    named, with the fix, not a traceback (GrainError)."""
    try:
        meta = json.loads((cache_dir / META_FILE).read_text())
        model = load_task_model(cfg.model, auto_cls, num_labels, path=str(cache_dir))
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GrainError(
            f"the cached teacher {cache_dir} cannot be loaded ({type(err).__name__}: {reason}); delete that "
            f"directory (rm -r '{cache_dir}') and run again to fine-tune it anew"
        ) from err
    return meta, model


@rank_zero_only
def save_teacher(model, tokenizer, cache_dir: Path, meta: dict) -> None:
    """Write into a temporary dir of its own, then rename it into place: an interrupted save never looks
    like a cached teacher, and runs saving the same teacher at once do not collide (the first rename
    wins; the same teacher from another run is kept)."""
    cache_dir = Path(cache_dir)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{cache_dir.name}.tmp-", dir=cache_dir.parent))
    try:
        with writing(cache_dir):
            model.save_pretrained(tmp)  # safetensors
            tokenizer.save_pretrained(tmp)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, cache_dir)  # atomic; fails if cache_dir exists and is not empty
        except OSError:
            if (cache_dir / META_FILE).exists():
                return  # another run cached the same teacher first
            # a leftover without metadata (an old, interrupted save): move it aside, then rename
            stale = Path(tempfile.mkdtemp(prefix=f"{cache_dir.name}.stale-", dir=cache_dir.parent))
            try:
                os.rename(cache_dir, stale / "old")
            except OSError:
                pass  # another run moved it first
            shutil.rmtree(stale, ignore_errors=True)
            try:
                os.rename(tmp, cache_dir)
            except OSError:
                if not (cache_dir / META_FILE).exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

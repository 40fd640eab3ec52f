"""Validation of a composed config, run once before anything else, so that bad values fail fast, in one
line that names the setting and the fix (GrainError)."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from grain.architectures import architecture_of, find_architecture, supported_families
from grain.checks import check_choice, check_count, check_range, is_int, show
from grain.conf import CONFIG_DIR
from grain.errors import GrainError
from grain.measure.compare import bench_shapes, serving_device
from grain.measure.latency_model import cached_latency_model, check_reachable
from grain.models.layer_drop import check_kept_layers
from grain.models.probe import check_tokenizer_dir, local_model_dir, model_config, model_family, read_model_config
from grain.modules.student import SCORE_LOSSES
from grain.pruning.controller import COST_KINDS, SCORE_KINDS, UNIT_MODES
from grain.pruning.ranking import BUDGET_MODES
from grain.stages.resume import check_checkpoint
from grain.stages.teacher import check_given_teacher
from grain.stages.trainer import PROGRESS_MODES, stage_steps
from grain.target import Target
from grain.tasks.base import task_class

STAGES = ("teacher", "prune", "compact")
# The Lightning Trainer settings grain passes on (conf/trainer/cpu.yaml; gpu.yaml and ddp.yaml change values)
TRAINER_SETTINGS = tuple(OmegaConf.load(CONFIG_DIR / "trainer" / "cpu.yaml"))
# Lightning Trainer options people reach for, and what grain has instead
TRAINER_HINTS = {
    "accumulate_grad_batches": "grain does not accumulate gradients (the student's pruning schedule and "
                               "checkpoints count optimizer steps); raise teacher.batch_size / student.batch_size",
    "gradient_clip_val": "student.max_grad_norm clips the student's gradients",
    "max_epochs": "set teacher.epochs / student.epochs",
    "val_check_interval": "grain validates at the end of each epoch",
}
STUDENT_INITS = ("pretrained", "teacher")


def command_line_keys(cfg: DictConfig) -> set[str]:
    """Keys the user set on the command line (Hydra's task overrides), e.g. {"sparsity", "task"}."""
    overrides = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
    if overrides is None:
        overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return {str(o).split("=", 1)[0].lstrip("+~") for o in overrides if not str(o).startswith("~")}


def validate_target(cfg: DictConfig) -> Target:
    """The run's target (`grain.target.Target`): `speedup` (a number > 1) replaces `sparsity`; both given
    on the command line, or pruner.cost=latency without a speedup, are refused."""
    check_choice(cfg, "pruner.cost", COST_KINDS, " (params: GRAIN as published; latency: needs speedup=<x>)")
    target = Target.of(cfg)
    if target.speedup is None:
        if cfg.pruner.cost == "latency":
            raise GrainError("pruner.cost=latency prunes to a speed: give speedup=<x> (e.g. speedup=8) instead of sparsity")
    elif "sparsity" in command_line_keys(cfg):
        raise GrainError(
            f"sparsity={cfg.sparsity} and speedup={target.value:g} both given; give one target: sparsity=<fraction> "
            "(parameters removed) or speedup=<x> (predicted latency)"
        )
    return target


def validate_config(cfg: DictConfig) -> Target:
    """Every check of a composed run config, cheapest first; raises GrainError on the first problem.
    Returns the run's target."""
    target = validate_target(cfg)
    unknown = [stage for stage in cfg.stages if stage not in STAGES]
    if unknown:
        raise GrainError(f"stages={list(cfg.stages)} has unknown stage(s) {unknown}; choose from {list(STAGES)}")
    task = task_class(cfg)  # task.datamodule._target_ names a Task
    check_choice(cfg, "student.init", STUDENT_INITS)
    check_choice(cfg, "pruner.units", UNIT_MODES)
    check_choice(cfg, "compact.vocabulary", (None, "task"), " (task: the tokens the task's text uses; null: all)")
    check_choice(cfg, "distillation.score_loss", (None, "kd", *SCORE_LOSSES),
                 " (null: kd, or mse where the head has one logit)")
    if cfg.distillation.get("score_loss") == "margin_mse" and not task.paired_training_rows:
        raise GrainError(
            f"distillation.score_loss=margin_mse reads (positive, negative) pairs of rows, which task={cfg.task.name} "
            f"does not train on; use distillation.score_loss=mse, or task=reranking with triples"
        )
    check_choice(cfg, "pruner.score", SCORE_KINDS)
    check_choice(cfg, "pruner.budget", BUDGET_MODES, " (grain: the QK units of emptied heads count in the budget; "
                 "official: they go on top of it, as airaria/GRAIN)")
    if not 0.0 <= cfg.pruner.start <= cfg.pruner.end <= 1.0:
        raise GrainError(
            f"pruner.start={cfg.pruner.start}, pruner.end={cfg.pruner.end}: need 0 <= start <= end <= 1 "
            f"(fractions of the student's training steps)"
        )
    if "prune" in cfg.stages and "teacher" not in cfg.stages and not cfg.teacher.path:
        raise GrainError("stages has 'prune' without 'teacher': add the teacher stage or give teacher.path=...")
    validate_sizes(cfg)
    task.validate_settings(cfg)  # the settings only the task knows (sizes, counts)
    config = validate_models(cfg, task)
    if cfg.student.get("keep_layers") and config is not None:
        check_kept_layers(list(cfg.student.keep_layers), architecture_of(config).config_value(config, "num_layers"))
    if target.speedup is not None and config is not None:
        check_cached_speed_target(cfg, config, target.speedup)
    check_checkpoint(cfg)
    task.check_data(cfg)  # the data this run reads (files, columns, labels), before anything trains
    return target


def unknown_trainer_setting(key: str, given: str | None = None) -> GrainError:
    """The error for a Lightning option grain does not pass on (`given`: as the user wrote it)."""
    hint = TRAINER_HINTS.get(key.removeprefix("trainer."), "")
    known = ", ".join(f"trainer.{name}" for name in TRAINER_SETTINGS)
    return GrainError(
        f"{given or key} is not a setting grain passes to Lightning" + (f": {hint}" if hint else "")
        + f" (the trainer settings: {known})"
    )


def validate_sizes(cfg: DictConfig) -> None:
    """Counts, sizes and rates: each a one-line error naming the setting, before anything trains."""
    unknown = [key for key in cfg.trainer if key not in TRAINER_SETTINGS]
    if unknown:  # `+trainer.<option>=...` composes, and Lightning would never see it
        raise unknown_trainer_setting(f"trainer.{unknown[0]}", f"+trainer.{unknown[0]}={cfg.trainer[unknown[0]]}")
    check_count(cfg, "task.max_train_samples", "task.max_train_samples=1000", null="all")
    check_count(cfg, "task.max_eval_samples", "task.max_eval_samples=500", null="all")
    for stage in ("teacher", "student"):
        check_count(cfg, f"{stage}.batch_size", f"{stage}.batch_size=32")
        check_count(cfg, f"{stage}.epochs", f"{stage}.epochs=3", unlimited="no epoch limit, with a max_steps cap")
        check_count(cfg, f"{stage}.max_steps", f"{stage}.max_steps=100", null="no cap", unlimited="no cap")
        check_count(cfg, f"{stage}.max_train_samples", f"{stage}.max_train_samples=1000", null="all")
        check_range(cfg, f"{stage}.lr", 0.0, 1.0, f"{stage}.lr=2e-5", low_open=True)
        check_range(cfg, f"{stage}.weight_decay", 0.0, float("inf"), f"{stage}.weight_decay=0.01")
        check_range(cfg, f"{stage}.warmup_ratio", 0.0, 1.0, f"{stage}.warmup_ratio=0.1", high_open=True)
    if cfg.student.get("max_grad_norm") is not None:
        check_range(cfg, "student.max_grad_norm", 0.0, float("inf"), "student.max_grad_norm=1.0", low_open=True)
    if cfg.student.get("dropout") is not None:
        check_range(cfg, "student.dropout", 0.0, 1.0, "student.dropout=0 (off) or null (the model's own)", high_open=True)
    for stage in ("teacher", "student"):
        check_count(cfg, f"{stage}.checkpoint_every_n_steps", f"{stage}.checkpoint_every_n_steps=200", null="off")
        if cfg[stage].get("checkpoint_every_minutes") is not None:
            check_range(cfg, f"{stage}.checkpoint_every_minutes", 0.0, float("inf"),
                        f"{stage}.checkpoint_every_minutes=30", low_open=True)
    check_count(cfg, "trainer.max_steps", "trainer.max_steps=5", null="no cap", unlimited="no cap")
    check_count(cfg, "trainer.log_every_n_steps", "trainer.log_every_n_steps=10")
    check_count(cfg, "trainer.num_workers", "trainer.num_workers=0", minimum=0)
    check_choice(cfg, "trainer.progress", PROGRESS_MODES)
    check_range(cfg, "trainer.progress_seconds", 0.0, float("inf"), "trainer.progress_seconds=30", low_open=True)
    devices = cfg.trainer.devices
    if not (devices == "auto" or (is_int(devices) and (devices >= 1 or devices == -1)) or OmegaConf.is_list(devices)):
        raise GrainError(
            f"{show('trainer.devices', devices)} is not a device count; give a number >= 1, -1 (all), 'auto' or a "
            f"list of ids, e.g. trainer.devices=1"
        )
    for stage in ("teacher", "student"):
        if cfg[stage].epochs == -1 and stage_steps(cfg[stage], cfg.trainer) == -1:
            raise GrainError(
                f"{stage}.epochs=-1 with no step cap would train forever; give a number of epochs or a cap, "
                f"e.g. {stage}.epochs=3 or {stage}.max_steps=1000"
            )
    check_count(cfg, "task.datamodule.max_length", "task.datamodule.max_length=128", minimum=8)
    check_count(cfg, "pruner.frequency", "pruner.frequency=1")
    check_range(cfg, "pruner.beta", 0.0, 1.0, "pruner.beta=0.998", high_open=True)
    check_range(cfg, "distillation.temperature", 0.0, float("inf"), "distillation.temperature=2.0", low_open=True)
    check_count(cfg, "compact.embedding_rank", "compact.embedding_rank=192", null="no factorized copy")
    check_count(cfg, "student.embedding_rank", "student.embedding_rank=192", null="full word embeddings")
    if cfg.student.get("embedding_rank") and cfg.compact.embedding_rank:
        raise GrainError(
            f"student.embedding_rank={cfg.student.embedding_rank} and compact.embedding_rank={cfg.compact.embedding_rank} "
            f"both factorize the word embeddings; keep one, e.g. compact.embedding_rank=null (factorized in training) or "
            f"student.embedding_rank=null (a factorized copy after training)"
        )
    check_range(cfg, "compact.latency_seconds", 0.0, float("inf"), "compact.latency_seconds=0.1", low_open=True)
    check_count(cfg, "compact.bench_batch", "compact.bench_batch=32", null="per device")
    check_count(cfg, "compact.bench_seq_len", "compact.bench_seq_len=128", null="per device")
    shapes = cfg.compact.get("bench_extra_shapes")
    if shapes is not None and not (
        OmegaConf.is_list(shapes)
        and all(OmegaConf.is_list(s) and len(s) == 2 and all(is_int(n) and n >= 1 for n in s) for s in shapes)
    ):
        raise GrainError(
            f"compact.bench_extra_shapes={OmegaConf.to_container(shapes) if OmegaConf.is_config(shapes) else shapes!r} "
            f"is not a list of [batch, length] pairs of positive integers; e.g. compact.bench_extra_shapes=[[32,128]] or null"
        )


def check_cached_speed_target(cfg: DictConfig, config: dict, speedup: float) -> None:
    """A speedup target beyond the cached latency model's ceiling (of the backbone's `config`) is refused
    here, before the teacher trains (without a cached model the prune stage measures one and checks it
    before the student trains)."""
    device = serving_device(cfg.trainer)
    batch, seq_len = bench_shapes(cfg.compact, device)[0]
    model = cached_latency_model(config, device, batch, seq_len, Path(cfg.paths.cache_dir))
    if model is not None:
        check_reachable(model, speedup)


def validate_models(cfg: DictConfig, task) -> dict | None:
    """model.pretrained, model.tokenizer and teacher.path: existing, loadable, of a family grain can
    compact, with a word embedding wider than student.embedding_rank and long enough for the task's
    max_length and the benchmark length; a local teacher.path with `task`'s head and labels
    (`check_given_teacher`). Returns the backbone's config.json (None: only on the hub)."""
    config = model_config(cfg)
    tokenizer = str(cfg.model.tokenizer)
    if tokenizer != "random":
        tokenizer_dir = local_model_dir("model.tokenizer", tokenizer, "give a local tokenizer directory or a hub name")
        if tokenizer_dir is not None:
            check_tokenizer_dir("model.tokenizer", tokenizer_dir)
    if cfg.teacher.path and "teacher" in cfg.stages:
        fix = (
            "give a directory saved with save_pretrained (config.json and weights), a hub name, or drop "
            "teacher.path to fine-tune a teacher"
        )
        teacher_dir = local_model_dir("teacher.path", str(cfg.teacher.path), fix)
        if teacher_dir is not None:
            read_model_config("teacher.path", teacher_dir)
            check_given_teacher(str(cfg.teacher.path), task.auto_model_class, task.label_names(cfg), cfg.task.name)

    family = model_family(cfg, config)
    architecture = find_architecture(family) if family is not None else None
    if family is not None and architecture is None:
        raise GrainError(
            f"model={cfg.model.name} (model.pretrained={cfg.model.pretrained}) is a {family} model, and grain prunes "
            f"encoders of the families {', '.join(supported_families())} (grain.architectures); pick one of those "
            f"(model=minilm, model=roberta-base, ...)"
        )

    rank = cfg.student.get("embedding_rank")
    size = config and (config.get("embedding_size") or config.get("hidden_size") or config.get("dim"))
    if is_int(rank) and is_int(size) and rank >= size:
        raise GrainError(
            f"student.embedding_rank={rank} is not below the word embedding size {size} of model={cfg.model.name}; "
            f"give a smaller rank (e.g. student.embedding_rank={max(1, size // 4)}) or null (no factorization)"
        )

    if config is not None and config.get("max_position_embeddings"):
        limit = int(config["max_position_embeddings"]) - (architecture.position_offset if architecture else 0)
        for key in ("task.datamodule.max_length", "compact.bench_seq_len"):
            value = OmegaConf.select(cfg, key)
            if is_int(value) and value > limit:
                raise GrainError(
                    f"{key}={value} is longer than model={cfg.model.name} can read ({limit} positions); "
                    f"give at most {key}={limit}"
                )
    return config

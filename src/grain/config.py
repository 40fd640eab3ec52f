"""Checks of a composed config, run before anything else so bad values fail fast and clearly."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from grain.errors import GrainError

STAGES = ("teacher", "prune", "compact")
TASK_TYPES = ("classification", "qa", "ner")
STUDENT_INITS = ("pretrained", "teacher")


def validate_config(cfg: DictConfig) -> None:
    sparsity = cfg.get("sparsity")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise GrainError(f"sparsity={sparsity!r} is not a number; give a fraction in [0, 1), e.g. sparsity=0.9")
    if not 0.0 <= float(sparsity) < 1.0:
        raise GrainError(
            f"sparsity={sparsity} is outside [0, 1); it is the fraction of encoder linear weights removed, "
            f"e.g. sparsity=0.9 keeps 10%"
        )
    unknown = [stage for stage in cfg.stages if stage not in STAGES]
    if unknown:
        raise GrainError(f"stages={list(cfg.stages)} has unknown stage(s) {unknown}; choose from {list(STAGES)}")
    if cfg.task.type not in TASK_TYPES:
        raise GrainError(f"task.type={cfg.task.type!r}; expected one of {list(TASK_TYPES)}")
    if cfg.student.init not in STUDENT_INITS:
        raise GrainError(f"student.init={cfg.student.init!r}; expected one of {list(STUDENT_INITS)}")
    from grain.pruning.controller import SCORE_KINDS, UNIT_MODES

    if cfg.pruner.units not in UNIT_MODES:
        raise GrainError(f"pruner.units={cfg.pruner.units!r}; expected one of {list(UNIT_MODES)}")
    if cfg.pruner.score not in SCORE_KINDS:
        raise GrainError(f"pruner.score={cfg.pruner.score!r}; expected one of {list(SCORE_KINDS)}")
    if not 0.0 <= cfg.pruner.start <= cfg.pruner.end <= 1.0:
        raise GrainError(
            f"pruner.start={cfg.pruner.start}, pruner.end={cfg.pruner.end}: need 0 <= start <= end <= 1 "
            f"(fractions of the student's training steps)"
        )
    if "prune" in cfg.stages and "teacher" not in cfg.stages and not cfg.teacher.path:
        raise GrainError("stages has 'prune' without 'teacher': add the teacher stage or give teacher.path=...")
    validate_sizes(cfg)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(key: str, value) -> str:
    return f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"


def check_count(cfg: DictConfig, key: str, example: str, minimum: int = 1, null: str | None = None,
                unlimited: str | None = None) -> None:
    """`key` must be an integer >= minimum; `null` (what null means) allows null, `unlimited` allows -1."""
    value = OmegaConf.select(cfg, key)
    if value is None and null is not None:
        return
    if _is_int(value) and (value >= minimum or (unlimited is not None and value == -1)):
        return
    allowed = [f"an integer >= {minimum}"]
    if unlimited is not None and unlimited == null:
        allowed.append(f"-1 or null ({unlimited})")
    else:
        if unlimited is not None:
            allowed.append(f"-1 ({unlimited})")
        if null is not None:
            allowed.append(f"null ({null})")
    problem = "is not an integer" if not _is_int(value) else "is not allowed"
    if key.endswith("max_steps") and value == 0:
        problem = "is not a step limit (it would train all the epochs)"
    raise GrainError(f"{_show(key, value)} {problem}; give {' or '.join(allowed)}, e.g. {example}")


def check_range(cfg: DictConfig, key: str, low: float, high: float, example: str, low_open: bool = False,
                high_open: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    ok = _is_number(value) and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise GrainError(f"{_show(key, value)} is not a number in {interval}; e.g. {example}")


def validate_sizes(cfg: DictConfig) -> None:
    """Counts, sizes and rates: each a one-line error naming the setting, before anything trains."""
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
    check_count(cfg, "trainer.max_steps", "trainer.max_steps=5", null="no cap", unlimited="no cap")
    check_count(cfg, "trainer.log_every_n_steps", "trainer.log_every_n_steps=10")
    check_count(cfg, "trainer.num_workers", "trainer.num_workers=0", minimum=0)
    devices = cfg.trainer.devices
    if not (devices == "auto" or (_is_int(devices) and (devices >= 1 or devices == -1)) or OmegaConf.is_list(devices)):
        raise GrainError(
            f"{_show('trainer.devices', devices)} is not a device count; give a number >= 1, -1 (all), 'auto' or a "
            f"list of ids, e.g. trainer.devices=1"
        )
    from grain.training import stage_steps

    for stage in ("teacher", "student"):
        if cfg[stage].epochs == -1 and stage_steps(cfg[stage], cfg.trainer) == -1:
            raise GrainError(
                f"{stage}.epochs=-1 with no step cap would train forever; give a number of epochs or a cap, "
                f"e.g. {stage}.epochs=3 or {stage}.max_steps=1000"
            )
    check_count(cfg, "task.datamodule.max_length", "task.datamodule.max_length=128", minimum=8)
    if cfg.task.type == "qa":
        check_count(cfg, "task.datamodule.doc_stride", "task.datamodule.doc_stride=128")
        if cfg.task.datamodule.doc_stride >= cfg.task.datamodule.max_length:
            raise GrainError(
                f"task.datamodule.doc_stride={cfg.task.datamodule.doc_stride} is not below "
                f"task.datamodule.max_length={cfg.task.datamodule.max_length}; windows overlap by doc_stride "
                f"tokens, e.g. max_length=384 doc_stride=128"
            )
        check_count(cfg, "task.datamodule.max_answer_length", "task.datamodule.max_answer_length=30")
        check_count(cfg, "task.datamodule.n_best", "task.datamodule.n_best=20")
    check_count(cfg, "pruner.frequency", "pruner.frequency=1")
    check_range(cfg, "pruner.beta", 0.0, 1.0, "pruner.beta=0.998", high_open=True)
    check_range(cfg, "distillation.temperature", 0.0, float("inf"), "distillation.temperature=2.0", low_open=True)
    check_count(cfg, "compact.embedding_rank", "compact.embedding_rank=192", null="no factorized copy")
    check_count(cfg, "compact.bench_batch", "compact.bench_batch=32", null="per device")
    check_count(cfg, "compact.bench_seq_len", "compact.bench_seq_len=128", null="per device")
    shapes = cfg.compact.get("bench_extra_shapes")
    if shapes is not None and not (
        OmegaConf.is_list(shapes)
        and all(OmegaConf.is_list(s) and len(s) == 2 and all(_is_int(n) and n >= 1 for n in s) for s in shapes)
    ):
        raise GrainError(
            f"compact.bench_extra_shapes={OmegaConf.to_container(shapes) if OmegaConf.is_config(shapes) else shapes!r} "
            f"is not a list of [batch, length] pairs of positive integers; e.g. compact.bench_extra_shapes=[[32,128]] or null"
        )

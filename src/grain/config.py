"""Checks of a composed config, run before anything else so bad values fail fast and clearly."""

from __future__ import annotations

from omegaconf import DictConfig

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

"""One grain run, its config validated (`grain.config`): the teacher, prune and compact stages, then
summary.json and the results block."""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from grain.errors import GrainError
from grain.models.backbone import load_tokenizer
from grain.stages.compact import run_compact_stage
from grain.stages.prune import run_prune_stage
from grain.stages.teacher import run_teacher_stage
from grain.stopping import RunStopped, check_stop
from grain.summary import versions, write_summary
from grain.target import Target
from grain.wandb_summary import publish_to_wandb

log = logging.getLogger(__name__)


def build_logger(cfg: DictConfig):
    if cfg.logger.get("_target_") is None:
        return None
    options = OmegaConf.to_container(cfg.logger, resolve=True)
    options.pop("log_model_artifact", None)  # grain's (grain.wandb_summary), not the logger's
    return hydra.utils.instantiate(options)


def finish_wandb() -> None:
    """Close the W&B run (also after errors), so the next job of a sweep starts its own run."""
    try:
        import wandb  # noqa: PLC0415  (optional: logger=wandb)
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()


def significant(value, digits: int = 4) -> str:
    """A number as logs show it: `digits` significant digits (0.5274999737739563 -> 0.5275), else n/a."""
    return f"{value:.{digits}g}" if isinstance(value, (int, float)) else "n/a"


# A target missed by more than this fraction is flagged (`target_missed`, the results block, a warning).
MISS_TOLERANCE = 0.10


def target_outcome(target: Target, summary: dict, prunes: bool = True) -> dict:
    """Where the run got in its target's measure: `target_reached` (the compact model's measured speedup,
    else the predicted one; or the student's sparsity), `target_measure` (which of them) and
    `target_missed` (short of the target by more than MISS_TOLERANCE of it; never where the run does not
    prune, `prunes` False: pruner=none, e.g. the layer-dropping baseline, pursues no target)."""
    if target.speedup is not None:
        measured = (summary.get("compact") or {}).get("speedup") is not None
        measure = "compact.speedup" if measured else "student.predicted_speedup"
    else:
        measure = "student.sparsity"
    section, key = measure.split(".")
    reached = (summary.get(section) or {}).get(key)
    missed = prunes and reached is not None and reached < (1 - MISS_TOLERANCE) * target.value
    return {"target_reached": reached, "target_measure": measure, "target_missed": bool(missed)}


def run_status(err: BaseException) -> str:
    """`stopped` for a run a signal or Ctrl-C ended (Lightning exits those with SystemExit), else `failed`."""
    return "stopped" if isinstance(err, (RunStopped, KeyboardInterrupt, SystemExit)) else "failed"


def base_summary(cfg: DictConfig, run_dir: Path, target: Target | None) -> dict:
    """summary.json's top level: what the run is (task, model, methods, the target: `sparsity` or
    `speedup`, the other null; both as given where the target was refused: `target` None), its config
    and versions."""
    return {
        "status": "running",
        "task": cfg.task.name,
        "model": cfg.model.name,
        "pruner": cfg.pruner.name,
        "distillation": cfg.distillation.name,
        "experiment": cfg.experiment_name,
        "metric_name": cfg.task.metric,
        "sparsity": target.sparsity if target else OmegaConf.select(cfg, "sparsity", default=None),
        "speedup": target.speedup if target else OmegaConf.select(cfg, "speedup", default=None),
        "eval_split": cfg.task.get("eval_split", "validation"),
        "run_dir": str(run_dir),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": versions(),
        "timing": {},
    }


def write_failed_summary(cfg: DictConfig, run_dir: Path, err: BaseException) -> None:
    """summary.json of a job whose config was refused (a sweep keeps a record of every job)."""
    try:
        target = Target.of(cfg)
    except GrainError:  # the target was what was refused: the summary records the values given
        target = None
    try:
        summary = base_summary(cfg, run_dir, target)
    except Exception:  # a config that does not even resolve
        summary = {"run_dir": str(run_dir), "config": OmegaConf.to_container(cfg, resolve=False)}
    summary.update(status="failed", error=f"{type(err).__name__}: {err}")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    save_summary(run_dir, summary)


def run_pipeline(cfg: DictConfig, run_dir: Path, target: Target) -> dict:
    """The stages of `cfg` (validated: `grain.config.validate_config`, which gives `target`) in `run_dir`;
    returns the summary, written to summary.json whatever happens."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    summary = base_summary(cfg, run_dir, target)
    started = time.perf_counter()
    logger = build_logger(cfg)
    try:
        tokenizer = load_tokenizer(cfg.model.tokenizer)
        stage_start = time.perf_counter()
        teacher = run_teacher_stage(cfg, tokenizer, run_dir, logger)
        check_stop()
        summary["teacher"] = {
            "metric": teacher.metrics.get(f"validation/{cfg.task.metric}"),
            "metrics": teacher.metrics,
            "path": teacher.path,
            "train_seconds": teacher.train_seconds,
            "cached": teacher.cached,
        }
        summary["timing"]["teacher_seconds"] = time.perf_counter() - stage_start
        log.info("teacher %s = %s (%s)", cfg.task.metric, significant(summary["teacher"]["metric"]), teacher.path)

        if "prune" in cfg.stages:
            stage_start = time.perf_counter()
            pruned = run_prune_stage(cfg, tokenizer, teacher.model, run_dir, logger)
            check_stop()
            summary["student"] = pruned.summary
            summary["timing"]["prune_seconds"] = time.perf_counter() - stage_start
            log.info(
                "student %s = %s at sparsity %.4f (%d/%d heads)", cfg.task.metric, significant(pruned.summary["metric"]),
                pruned.summary["sparsity"], pruned.summary["heads_kept"], pruned.summary["heads_total"],
            )
            if "compact" in cfg.stages and rank_zero_only.rank == 0:  # other DDP ranks are done
                stage_start = time.perf_counter()
                summary["compact"] = run_compact_stage(cfg, tokenizer, pruned, teacher.model, summary, run_dir)
                check_stop()
                summary["timing"]["compact_seconds"] = time.perf_counter() - stage_start
        summary.update(target_outcome(target, summary, prunes=cfg.pruner.units != "none"))
        if summary["target_missed"]:
            log.warning("target %s missed: reached %s (%s)", target, significant(summary["target_reached"]),
                        summary["target_measure"])
        summary["status"] = "completed"
        if logger is not None:
            logger.log_metrics(flat_metrics(summary))
    except BaseException as err:
        summary["status"] = run_status(err)
        summary["error"] = f"{type(err).__name__}: {err}"
        summary["traceback"] = traceback.format_exc()
        raise
    finally:
        summary["timing"]["total_seconds"] = time.perf_counter() - started
        save_summary(run_dir, summary)
        if rank_zero_only.rank == 0:
            publish_to_wandb(logger, summary, run_dir, bool(cfg.logger.get("log_model_artifact", False)))
        finish_wandb()
    return summary


@rank_zero_only
def save_summary(run_dir: Path, summary: dict) -> None:
    path = write_summary(run_dir, summary)
    log.info("wrote %s", path)


def results_block(summary: dict) -> str:
    """What a run ends with on the console: metrics, sparsity, speedup, where the models and the summary are."""
    metric = summary.get("metric_name", "metric")

    def value(x, fmt=".4f"):
        return format(x, fmt) if isinstance(x, (int, float)) else "n/a"

    run_dir = summary.get("run_dir", ".")
    target = f"speedup {summary['speedup']}" if summary.get("speedup") is not None else f"sparsity {summary.get('sparsity')}"
    # pruner=none (layer dropping, plain distillation) pursues no target, as target_outcome reads the config
    prunes = ((summary.get("config") or {}).get("pruner") or {}).get("units") != "none"
    sparsity_target = f"target {summary.get('sparsity')}" if prunes else "no target"
    lines = [f"grain: {summary.get('task')} {summary.get('model')} {target if prunes else 'no pruning'}: "
             f"{summary.get('status')}"]
    teacher = summary.get("teacher") or {}
    if teacher:
        cached = " (cached)" if teacher.get("cached") else ""
        lines.append(f"  teacher  {metric} {value(teacher.get('metric'))}{cached}   {teacher.get('path')}")
    student = summary.get("student") or {}
    if student:
        lines.append(
            f"  student  {metric} {value(student.get('metric'))}   sparsity {value(student.get('sparsity'))} "
            f"({sparsity_target}), heads {student.get('heads_kept')}/{student.get('heads_total')}"
            if summary.get("speedup") is None or not prunes else
            f"  student  {metric} {value(student.get('metric'))}   sparsity {value(student.get('sparsity'))}, "
            f"predicted speedup {value(student.get('predicted_speedup'), '.2f')}x (target {summary['speedup']}x, "
            f"cost {student.get('cost')}), heads {student.get('heads_kept')}/{student.get('heads_total')}"
        )
    if summary.get("target_missed"):
        lines.append(
            f"  target   MISSED: {target} asked, {value(summary.get('target_reached'), '.3g')} reached "
            f"({summary.get('target_measure')}, more than {MISS_TOLERANCE:.0%} short)"
        )
    compact = summary.get("compact") or {}
    if compact:
        lines.append(
            f"  compact  {metric} {value(compact.get('metric'))}   speedup {value(compact.get('speedup'), '.2f')}x "
            f"(FLOPs-ideal {value(compact.get('flops_ratio'), '.2f')}x) on {compact.get('device')}, batch "
            f"{compact.get('batch')} x {compact.get('seq_len')}   {compact.get('path')}"
        )
    vocabulary = compact.get("vocabulary") or {}
    if vocabulary:
        lines.append(
            f"  vocab    {metric} {value(vocabulary.get('metric'))}   {vocabulary['tokens_kept']:,} of "
            f"{vocabulary['tokens_total']:,} tokens kept (the task's), word embeddings "
            f"{vocabulary['full_embedding_params']:,} -> {vocabulary['embedding_params']:,} params"
        )
    seconds = (summary.get("timing") or {}).get("total_seconds")
    lines.append(f"  summary  {Path(run_dir) / 'summary.json'}" + (f"   ({seconds:.0f} s)" if seconds else ""))
    return "\n".join(lines)


def flat_metrics(summary: dict) -> dict[str, float]:
    """The headline numbers of summary.json, for the experiment logger."""
    flat = {}
    for section in ("teacher", "student", "compact"):
        for key in ("metric", "sparsity", "speedup", "heads_kept"):
            value = summary.get(section, {}).get(key)
            if isinstance(value, (int, float)):
                flat[f"summary/{section}_{key}"] = float(value)
    return flat

"""A finished run's results in its W&B run: the scalars of summary.json in `run.summary` (what the
runs table and the parallel-coordinates panels read; `log_metrics` only fills the history, whose last
value a panel shows only per step), `structure.png` as a `wandb.Image`, and, with
`logger.log_model_artifact=true`, the compact model as a `model` artifact.

`publish_to_wandb(logger, summary, run_dir, log_model_artifact)` is called by the pipeline after
summary.json is written; anything but a WandbLogger is left alone, and a failure here is a warning,
never the run's error.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)

# summary.json section -> keys whose scalar values go to the W&B run summary as `<section>/<key>`
SCALARS = {
    "teacher": ("metric", "train_seconds"),
    "student": (
        "metric", "sparsity", "target_sparsity", "target_speedup", "predicted_speedup", "heads_kept",
        "heads_total", "train_seconds", "steps",
    ),
    "compact": (
        "metric", "speedup", "predicted_speedup", "latency_ms", "dense_latency_ms", "flops_ratio", "params",
        "dense_params", "encoder_params", "dense_encoder_params", "flops", "kept_flops", "dense_flops",
        "max_abs_logit_diff_vs_masked",
    ),
    "timing": ("teacher_seconds", "prune_seconds", "compact_seconds", "total_seconds"),
}
TOP_LEVEL = (
    "task", "model", "pruner", "distillation", "metric_name", "sparsity", "speedup", "status", "eval_split",
    "target_reached", "target_missed",
)


def is_scalar(value) -> bool:
    return isinstance(value, (bool, int, float, str))


def summary_scalars(summary: dict) -> dict:
    """The final numbers of summary.json, flat (`student/metric`, `compact/speedup`, ...), and the
    retention (student / teacher metric); None and non-scalar values are left out."""
    flat = {key: summary[key] for key in TOP_LEVEL if is_scalar(summary.get(key))}
    for section, keys in SCALARS.items():
        values = summary.get(section) or {}
        for key in keys:
            if is_scalar(values.get(key)):
                flat[f"{section}/{key}"] = values[key]
    if isinstance((summary.get("student") or {}).get("cost"), str):
        flat["student/cost"] = summary["student"]["cost"]
    teacher, student = flat.get("teacher/metric"), flat.get("student/metric")
    if isinstance(teacher, (int, float)) and isinstance(student, (int, float)) and teacher:
        flat["retention"] = student / teacher
    return flat


def publish(run, summary: dict, run_dir: Path, log_model_artifact: bool = False) -> dict:
    """Put the results of `summary` into the W&B `run` (anything with `.summary`, `.log` and
    `.log_artifact`); returns the scalars written."""
    import wandb  # noqa: PLC0415  (optional: logger=wandb)

    run_dir = Path(run_dir)
    scalars = summary_scalars(summary)
    run.summary.update(scalars)
    structure = run_dir / "structure.png"
    if structure.exists():
        image = wandb.Image(str(structure), caption=f"{summary.get('task')} {summary.get('model')} kept structure")
        run.log({"structure": image})
        run.summary["structure"] = image
    compact_dir = Path((summary.get("compact") or {}).get("path") or run_dir / "compact")
    if log_model_artifact and (compact_dir / "config.json").exists():
        name = f"compact-{summary.get('task')}-{summary.get('model')}-s{summary.get('sparsity')}".replace("/", "-")
        artifact = wandb.Artifact(name, type="model", metadata=scalars)
        artifact.add_dir(str(compact_dir))
        run.log_artifact(artifact)
    return scalars


def publish_to_wandb(logger, summary: dict, run_dir: Path, log_model_artifact: bool = False) -> None:
    """`publish` into the run of `logger` when it is a WandbLogger; a warning if that fails."""
    if not isinstance(logger, WandbLogger):
        return
    try:
        publish(logger.experiment, summary, run_dir, log_model_artifact)
    except Exception as err:  # the run's results are in summary.json whatever W&B does
        log.warning("could not write the results into the W&B run: %s: %s", type(err).__name__, err)

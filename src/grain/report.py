"""`python -m grain.report <dir>... --out <dir>`: tables and plots from the runs' summary.json files.

Reads every summary.json under the given run or multirun dirs and writes
- `runs.md` and `runs.csv`: one row per run (task, model, pruner, variant, target sparsity or speedup,
  achieved sparsity, teacher and student metric, retention, compact params, measured and predicted
  speedup);
- `<task>_sparsity_vs_metric.{png,svg}`: student metric against achieved sparsity;
- `<task>_speedup_vs_metric.{png,svg}`: student metric against the measured speedup of the compact
  model (summary.json `compact.speedup`), e.g. variants `grain`, `grain+latency` (`pruner.cost=latency`)
  and `head`;
  both with one line per (model, pruner, variant), never one curve across models, each model's teacher
  as a dashed line in its colour, and a y-axis that holds the teachers and spans at least
  `MIN_Y_SPAN` of the metric (no zoom onto a 0.001 range);
- with `--structure`, `structure_<run>.png` for each run (kept QK/VO dims per head, FFN width).
Numbers from a non-official split (e.g. SQuAD dev split offline) are flagged in the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from grain.summary import SUMMARY_FILE  # noqa: E402
from grain.viz import plot_structure  # noqa: E402

COLUMNS = [
    "task", "model", "pruner", "variant", "target_sparsity", "target_speedup", "sparsity", "teacher_metric",
    "student_metric", "retention", "compact_metric", "compact_encoder_params", "speedup", "predicted_speedup",
    "heads_kept", "eval_split", "status", "run_dir",
]
MIN_Y_SPAN = 0.05  # of the metric's scale (max(1, |metric|)): the least y range a plot shows


def find_summaries(dirs: list[Path]) -> list[Path]:
    found = []
    for directory in dirs:
        directory = Path(directory)
        if (directory / SUMMARY_FILE).exists():
            found.append(directory / SUMMARY_FILE)
        found.extend(p for p in sorted(directory.rglob(SUMMARY_FILE)) if p not in found)
    return found


def variant_name(summary: dict) -> str:
    """What distinguishes this run's method: an explicit `variant`, else pruner and its switches."""
    config = summary.get("config", {})
    if config.get("variant"):
        return str(config["variant"])
    pruner = config.get("pruner", {})
    name = pruner.get("name", summary.get("pruner", "?"))
    if pruner.get("score", "grad") not in ("grad", name):
        name += f"-{pruner['score']}"
    if pruner.get("structure_reg") is False:
        name += "-noreg"
    if pruner.get("gradient_separation") is False:
        name += "-nosep"
    distillation = config.get("distillation", {}).get("name", "grain")
    if distillation != "grain":
        name += f"-{distillation}"
    if cost_of(summary) == "latency":
        name += "+latency"
    return name


def cost_of(summary: dict) -> str:
    """What the pruner charged a unit: summary student.cost (a speedup target), else the config's."""
    cost = (summary.get("student") or {}).get("cost")
    return cost or ((summary.get("config") or {}).get("pruner") or {}).get("cost") or "params"


def row_of(path: Path) -> dict:
    summary = json.loads(path.read_text())
    teacher, student, compact = summary.get("teacher", {}), summary.get("student", {}), summary.get("compact", {})
    retention = None
    if teacher.get("metric") and student.get("metric") is not None:
        retention = student["metric"] / teacher["metric"]
    config = summary.get("config") or {}
    target_speedup = student.get("target_speedup", config.get("speedup"))
    return {
        "task": summary.get("task"),
        "model": summary.get("model"),
        "pruner": summary.get("pruner", (config.get("pruner") or {}).get("name")),
        "variant": variant_name(summary),
        # a speedup target leaves sparsity to the controller (student.target_sparsity is then None)
        "target_sparsity": student.get("target_sparsity", summary.get("sparsity")) if target_speedup is None else None,
        "target_speedup": target_speedup,
        "sparsity": student.get("sparsity"),
        "teacher_metric": teacher.get("metric"),
        "student_metric": student.get("metric"),
        "retention": retention,
        "compact_metric": compact.get("metric"),
        "compact_encoder_params": compact.get("encoder_params"),
        "speedup": compact.get("speedup"),
        "predicted_speedup": compact.get("predicted_speedup", student.get("predicted_speedup")),
        "heads_kept": f"{student['heads_kept']}/{student['heads_total']}" if "heads_kept" in student else None,
        "eval_split": summary.get("eval_split", "validation"),
        "status": summary.get("status"),
        "run_dir": str(path.parent),
        "_summary": summary,
    }


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_tables(rows: list[dict], out: Path) -> None:
    with (out / "runs.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in COLUMNS if c not in ("run_dir", "eval_split")]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    unofficial = False
    for row in rows:
        cells = [fmt(row[c]) for c in shown]
        if row["eval_split"] != "validation":
            cells[0] += " *"
            unofficial = True
        lines.append("| " + " | ".join(cells) + " |")
    if unofficial:
        lines.append("\n\\* evaluated on a non-official split (see eval_split in runs.csv), not comparable with "
                     "published numbers.")
    (out / "runs.md").write_text("\n".join(lines) + "\n")


def line_key(row: dict) -> tuple:
    """What one line of a plot holds: runs of one model, task, pruner and variant."""
    return (row["model"] or "?", row["task"] or "?", row["pruner"] or "?", row["variant"])


def line_label(key: tuple) -> str:
    model, _, pruner, variant = key
    return f"{model} {variant}" if variant.split("-")[0].split("+")[0] == pruner else f"{model} {pruner} {variant}"


def y_limits(values: list[float]) -> tuple[float, float]:
    """A y range holding `values` (students and teachers) with a margin, at least MIN_Y_SPAN of the
    metric's scale wide, so that a plot never zooms a 0.001 difference to its full height."""
    low, high = min(values), max(values)
    least = MIN_Y_SPAN * max(1.0, max(abs(v) for v in values))
    span = max(high - low, least)
    middle = (low + high) / 2
    low, high = middle - span / 2, middle + span / 2
    margin = 0.08 * span
    return low - margin, high + margin


def most_common(values: list):
    return max(set(values), key=values.count)


def plot_metric(rows: list[dict], x: str, xlabel: str, name: str, out: Path) -> list[Path]:
    """Per task, the student metric against `x`: one line per (model, pruner, variant), each model's
    teacher as a dashed line in the colour of its first line."""
    written = []
    by_task = defaultdict(list)
    for row in rows:
        if row["student_metric"] is not None and row[x] is not None:
            by_task[row["task"]].append(row)
    for task, task_rows in by_task.items():
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        lines = defaultdict(list)
        for row in task_rows:
            lines[line_key(row)].append(row)
        colors = {}
        values = []
        for key, points in sorted(lines.items()):
            points.sort(key=lambda r: r[x])
            ys = [p["student_metric"] for p in points]
            (line,) = ax.plot([p[x] for p in points], ys, marker="o", label=line_label(key))
            colors.setdefault(key[0], line.get_color())
            values += ys
        teachers = defaultdict(list)
        for row in task_rows:
            if row["teacher_metric"] is not None:
                teachers[row["model"] or "?"].append(row["teacher_metric"])
        for model, metrics in sorted(teachers.items()):
            teacher = most_common(metrics)
            ax.axhline(teacher, color=colors.get(model, "gray"), linestyle="--", linewidth=1, label=f"{model} teacher")
            values.append(teacher)
        ax.set_ylim(*y_limits(values))
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        metric = task_rows[0]["_summary"].get("metric_name", "metric")
        split = task_rows[0]["eval_split"]
        ax.set_xlabel(xlabel)
        # a non-official split's description is long: wrapped, so that the label stays inside the figure
        ax.set_ylabel(textwrap.fill(f"student {metric}" + ("" if split == "validation" else f" ({split})"), 50))
        ax.set_title(f"{task}: {name} vs {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        for suffix in ("png", "svg"):
            path = out / f"{task}_{name}_vs_metric.{suffix}"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
    return written


def plot_tasks(rows: list[dict], out: Path) -> list[Path]:
    """`<task>_sparsity_vs_metric` and, for runs with a measured speedup, `<task>_speedup_vs_metric`."""
    return plot_metric(rows, "sparsity", "achieved sparsity (prunable units' parameters removed)", "sparsity", out) + plot_metric(
        rows, "speedup", "measured speedup of the compact model (dense / compact latency)", "speedup", out
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grain.report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs or multirun dirs")
    parser.add_argument("--out", type=Path, required=True, help="where to write tables and plots")
    parser.add_argument("--structure", action="store_true", help="also draw each run's structure picture")
    args = parser.parse_args(argv)
    paths = find_summaries(args.dirs)
    if not paths:
        print(f"grain.report: error: no {SUMMARY_FILE} under {[str(d) for d in args.dirs]}", file=sys.stderr)
        return 2
    rows = sorted(
        (row_of(p) for p in paths),
        key=lambda r: (r["task"] or "", r["model"] or "", r["pruner"] or "", r["variant"], r["target_sparsity"] or 0,
                       r["target_speedup"] or 0),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_tables(rows, args.out)
    plots = plot_tasks(rows, args.out)
    if args.structure:
        for row in rows:
            student = row["_summary"].get("student")
            if student and "layers" in student:
                target = f"s{row['target_sparsity']}" if row["target_speedup"] is None else f"x{row['target_speedup']}"
                name = f"structure_{row['task']}_{row['model']}_{row['variant']}_{target}_{Path(row['run_dir']).name}.png"
                plots.append(plot_structure(student, args.out / name, title=f"{row['task']} {row['model']} {row['variant']}"))
    print((args.out / "runs.md").read_text())
    print(f"wrote {args.out / 'runs.md'}, {args.out / 'runs.csv'} and {len(plots)} figure(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m grain.report <dir>... --out <dir>`: tables and plots from the runs' summary.json files.

Reads every summary.json under the given run or multirun dirs and writes
- `runs.md` and `runs.csv`: one row per run (task, model, variant, target and achieved sparsity,
  teacher and student metric, retention, compact params, speedup);
- `<task>_sparsity_vs_metric.{png,svg}`: student metric against achieved sparsity, one line per
  variant, the teacher as a dashed line;
- with `--structure`, `structure_<run>.png` for each run (kept QK/VO dims per head, FFN width).
Numbers from a non-official split (e.g. SQuAD dev split offline) are flagged in the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from grain.summary import SUMMARY_FILE  # noqa: E402
from grain.viz import plot_structure  # noqa: E402

COLUMNS = [
    "task", "model", "variant", "target_sparsity", "sparsity", "teacher_metric", "student_metric",
    "retention", "compact_metric", "compact_encoder_params", "speedup", "heads_kept", "eval_split", "status", "run_dir",
]


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
    return name


def row_of(path: Path) -> dict:
    summary = json.loads(path.read_text())
    teacher, student, compact = summary.get("teacher", {}), summary.get("student", {}), summary.get("compact", {})
    retention = None
    if teacher.get("metric") and student.get("metric") is not None:
        retention = student["metric"] / teacher["metric"]
    return {
        "task": summary.get("task"),
        "model": summary.get("model"),
        "variant": variant_name(summary),
        "target_sparsity": summary.get("sparsity"),
        "sparsity": student.get("sparsity"),
        "teacher_metric": teacher.get("metric"),
        "student_metric": student.get("metric"),
        "retention": retention,
        "compact_metric": compact.get("metric"),
        "compact_encoder_params": compact.get("encoder_params"),
        "speedup": compact.get("speedup"),
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
        lines.append("\n\\* evaluated on a non-official split (see eval_split in runs.csv), not comparable with published numbers.")
    (out / "runs.md").write_text("\n".join(lines) + "\n")


def plot_tasks(rows: list[dict], out: Path) -> list[Path]:
    written = []
    by_task = defaultdict(list)
    for row in rows:
        if row["student_metric"] is not None and row["sparsity"] is not None:
            by_task[row["task"]].append(row)
    for task, task_rows in by_task.items():
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        by_variant = defaultdict(list)
        for row in task_rows:
            by_variant[row["variant"]].append(row)
        for variant, points in sorted(by_variant.items()):
            points.sort(key=lambda r: r["sparsity"])
            ax.plot([p["sparsity"] for p in points], [p["student_metric"] for p in points], marker="o", label=variant)
        teachers = [r["teacher_metric"] for r in task_rows if r["teacher_metric"] is not None]
        if teachers:
            ax.axhline(max(set(teachers), key=teachers.count), color="gray", linestyle="--", label="teacher")
        metric = task_rows[0]["_summary"].get("metric_name", "metric")
        split = task_rows[0]["eval_split"]
        ax.set_xlabel("achieved sparsity (encoder linear weights removed)")
        ax.set_ylabel(f"student {metric}" + ("" if split == "validation" else f" ({split})"))
        ax.set_title(f"{task}: sparsity vs {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        for suffix in ("png", "svg"):
            path = out / f"{task}_sparsity_vs_metric.{suffix}"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
    return written


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
    rows = sorted((row_of(p) for p in paths), key=lambda r: (r["task"] or "", r["variant"], r["target_sparsity"] or 0))
    args.out.mkdir(parents=True, exist_ok=True)
    write_tables(rows, args.out)
    plots = plot_tasks(rows, args.out)
    if args.structure:
        for row in rows:
            student = row["_summary"].get("student")
            if student and "layers" in student:
                name = f"structure_{row['task']}_{row['variant']}_s{row['target_sparsity']}_{Path(row['run_dir']).name}.png"
                plots.append(plot_structure(student, args.out / name, title=f"{row['task']} {row['variant']}"))
    print((args.out / "runs.md").read_text())
    print(f"wrote {args.out / 'runs.md'}, {args.out / 'runs.csv'} and {len(plots)} figure(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

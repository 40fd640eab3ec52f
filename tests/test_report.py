"""grain.report: one line per (model, task, pruner, variant), y-axes a reader can compare, the
accuracy-vs-measured-speedup plot of issue 18, and runs.csv's columns."""

import csv
import json

import matplotlib.pyplot as plt
import pytest

from grain import report


def write_run(root, name, *, model, sparsity, metric, teacher, pruner="grain", speedup=None, cost=None,
              target_speedup=None, predicted=None):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    student = {"metric": metric, "sparsity": sparsity, "heads_kept": 8, "heads_total": 12}
    compact = {}
    if speedup is not None:
        compact = {"metric": metric, "speedup": speedup, "encoder_params": 1000}
    if cost is not None:
        student.update(cost=cost, target_speedup=target_speedup, predicted_speedup=predicted, target_sparsity=None)
        compact["predicted_speedup"] = predicted
    summary = {
        "status": "completed", "task": "sst2", "model": model, "pruner": pruner, "metric_name": "accuracy",
        "sparsity": sparsity, "config": {"pruner": {"name": pruner, "cost": cost or "params"}, "speedup": target_speedup},
        "teacher": {"metric": teacher}, "student": student, "compact": compact,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def kept_figures(monkeypatch):
    """The figures main() draws, kept open (it closes them once saved) and keyed by their title."""
    plt.close("all")
    monkeypatch.setattr(plt, "close", lambda *args, **kwargs: None)
    yield lambda: {plt.figure(n).axes[0].get_title(): plt.figure(n).axes[0] for n in plt.get_fignums()}
    monkeypatch.undo()
    plt.close("all")


def student_lines(ax):
    return [line for line in ax.get_lines() if line.get_marker() == "o"]


def test_runs_of_two_models_are_two_lines_on_a_readable_axis(tmp_path, kept_figures):
    # two models, one task, one pruner, one variant: the metrics differ by a few thousandths
    for i, s in enumerate((0.5, 0.9)):
        write_run(tmp_path / "runs", f"minilm{i}", model="minilm", sparsity=s, metric=0.9100 - 0.001 * i, teacher=0.912)
        write_run(tmp_path / "runs", f"bert{i}", model="bert-base", sparsity=s + 0.01, metric=0.9105 - 0.001 * i, teacher=0.93)
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    ax = kept_figures()["sst2: sparsity vs accuracy"]
    lines = student_lines(ax)
    assert len(lines) == 2  # not one curve zig-zagging across models
    assert sorted(sorted(line.get_xdata()) for line in lines) == [[0.5, 0.9], [0.51, 0.91]]
    low, high = ax.get_ylim()
    assert high - low >= 0.05  # never a 0.001 range blown up to the full height
    dashed = {round(line.get_ydata()[0], 4) for line in ax.get_lines() if line.get_linestyle() == "--"}
    assert dashed == {0.912, 0.93}  # each model's teacher, inside the axis
    assert low < 0.9 and high > 0.93


def test_speedup_plot_has_one_line_per_variant_and_the_table_its_columns(tmp_path, kept_figures):
    runs = tmp_path / "runs"
    for i, (s, x) in enumerate(((0.9, 3.0), (0.95, 5.0))):
        write_run(runs, f"grain{i}", model="minilm", sparsity=s, metric=0.90 - 0.02 * i, teacher=0.92, speedup=x)
        write_run(runs, f"head{i}", model="minilm", sparsity=s, metric=0.88 - 0.03 * i, teacher=0.92, speedup=x + 0.5,
                  pruner="head")
    for i, x in enumerate((4, 8)):
        write_run(runs, f"lat{i}", model="minilm", sparsity=0.9 + 0.03 * i, metric=0.89 - 0.01 * i, teacher=0.92,
                  speedup=x * 0.95, cost="latency", target_speedup=x, predicted=x * 1.01)
    write_run(runs, "nocompact", model="minilm", sparsity=0.5, metric=0.91, teacher=0.92)  # no speedup: not plotted
    out = tmp_path / "out"
    assert report.main([str(runs), "--out", str(out)]) == 0
    assert (out / "sst2_speedup_vs_metric.png").exists() and (out / "sst2_speedup_vs_metric.svg").exists()
    ax = kept_figures()["sst2: speedup vs accuracy"]
    by_label = {line.get_label(): sorted(line.get_xdata()) for line in student_lines(ax)}
    assert by_label == {"minilm grain": [3.0, 5.0], "minilm grain+latency": [3.8, 7.6], "minilm head": [3.5, 5.5]}

    with (out / "runs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"model", "pruner", "target_speedup", "predicted_speedup"} <= set(rows[0])
    latency = [r for r in rows if r["variant"] == "grain+latency"]
    assert [(r["pruner"], r["target_speedup"], r["target_sparsity"]) for r in latency] == [("grain", "4", ""), ("grain", "8", "")]
    assert [float(r["predicted_speedup"]) for r in latency] == [4.04, 8.08]
    assert {r["pruner"] for r in rows if r["variant"] == "head"} == {"head"}
    assert "pruner" in (out / "runs.md").read_text().splitlines()[0]

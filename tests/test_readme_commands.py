"""Every `python -m grain.run` command of the README's "Running" section runs as written.

The commands are read from README.md, so an edit there is tested. Only cheap overrides are appended
(model=tiny, a few steps, the CSV logger, the tiny fixtures as data, tmp dirs through PROJECT_ROOT);
all but the smoke run skip the compact stage, whose latency benchmark takes seconds per run.
Placeholders (`/my/...`, `outputs/.../`) are filled from the runs before: the teacher one of them
fine-tuned, the checkpoint of the last single run.
"""

import json
import re
from pathlib import Path

import pytest

from tests.helpers.paths import CONF_DIR, REPO
from tests.helpers.runs import readme_commands, run_grain, summaries

CHEAP = ["model=tiny", "trainer.max_steps=2", "logger=csv"]


def test_readme_lists_the_documented_commands():
    commands = readme_commands()
    assert len(commands) >= 5
    assert any("-m" in args for args in commands), "the README shows a sweep"
    assert any(arg.startswith("teacher.path=") for args in commands for arg in args)
    assert any(arg.startswith("ckpt_path=") for args in commands for arg in args)


def test_readme_config_groups_table_names_every_preset():
    """Each row of the README's "Config groups" table names every option its `src/grain/conf/<group>/`
    holds, and every group but hydra's has a row: a preset added without a word in the README is found."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Config groups", 1)[1].split("\n\n", 2)[1]
    rows = {line.split("|")[1].strip().strip("`"): line.split("|")[2] for line in table.splitlines()[2:]}
    for group in sorted(d.name for d in CONF_DIR.iterdir() if d.is_dir() and d.name not in ("hydra", "__pycache__")):
        assert group in rows, f"README's config groups table has no row for {group}"
        missing = [f.stem for f in sorted((CONF_DIR / group).glob("*.yaml"))
                   if not re.search(rf"`{re.escape(f.stem)}[` ]", rows[group])]  # `name` or `name key=...`
        assert not missing, f"README's config groups table does not name {group} option(s) {missing}"


def fill_placeholders(args: list[str], runs: list[Path]) -> list[str]:
    filled = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "teacher.path" and value.startswith("/my/"):
            teacher = next(json.loads((run / "summary.json").read_text())["teacher"]["path"] for run in runs)
            arg = f"teacher.path={teacher}"
        elif key == "speedup":  # the README's targets are MiniLM's; model=tiny reaches 3.9x at most (refused above)
            arg = f"speedup={min(float(value), 1.5):g}"
        elif key == "ckpt_path" and "..." in value:
            [last] = [runs[-1] / "checkpoints" / "last.ckpt"]
            assert last.exists(), f"{runs[-1]} wrote no checkpoint to resume from"
            arg = f"ckpt_path={last}"
        filled.append(arg)
    return filled


@pytest.mark.slow  # every command a tiny run: minutes
def test_every_readme_run_command_runs(tmp_path):
    runs: list[Path] = []  # single runs in order, for the placeholders
    for args in readme_commands():
        smoke = "model=tiny" in args
        extra = CHEAP + ([] if smoke else ["stages=[teacher,prune]"])
        args = fill_placeholders(args, runs)
        before = set(summaries(tmp_path))
        result = run_grain([*args, *extra], tmp_path)
        assert result.returncode == 0, f"{args}:\n{result.stderr[-3000:]}"
        written = sorted(set(summaries(tmp_path)) - before)
        statuses = [json.loads(p.read_text())["status"] for p in written]
        assert statuses and set(statuses) == {"completed"}, (args, statuses)
        if "-m" in args:
            [sweep] = [a for a in args if a.startswith("sparsity=")]
            values = sweep.split("=", 1)[1].split(",")
            assert len(written) == len(values)
            # multirun/<timestamp>/<job>_<task>_<model>_s<sparsity>/summary.json
            assert {p.parent.parent.parent.name for p in written} == {"multirun"}
            assert len({p.parent.parent for p in written}) == 1
            assert sorted(p.parent.name.rsplit("_s", 1)[1] for p in written) == sorted(values)
        else:
            [path] = written
            runs.append(path.parent)
            if smoke:
                assert (path.parent / "compact" / "config.json").exists()

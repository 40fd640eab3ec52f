"""`python -m grain.run` as a subprocess (finished or running), the summaries runs write, and the
commands the README shows."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from grain.models.masks import EncoderShape
from tests.helpers.paths import FIXTURES, REPO

# model=tiny's encoder (conf/model/tiny.yaml): what a run's summary counts its sparsity over
TINY_RUN_SHAPE = EncoderShape(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128)

# A tiny run through the prune stage, 24 student steps (64 examples / 8 a batch, 3 epochs), pruning over
# steps 5..14, a checkpoint every 2 steps: for resuming it.
RESUMABLE_RUN = [
    "task=sst2", "model=tiny", "logger=none", "stages=[teacher,prune]", "teacher.max_steps=2", "student.epochs=3",
    "student.batch_size=8", "student.init=teacher", "pruner.start=0.2", "pruner.end=0.6",
    "student.checkpoint_every_n_steps=2",
]


def grain_env(tmp_path, data_dir=FIXTURES) -> dict:
    """The environment of a run: outputs and caches under tmp_path, offline W&B, `data_dir` as the data
    (None: no GRAIN_DATA_DIR, the config's own data directory)."""
    env = dict(os.environ, PROJECT_ROOT=str(tmp_path), WANDB_MODE="offline")
    env.pop("GRAIN_CACHE_DIR", None)
    if data_dir is None:
        env.pop("GRAIN_DATA_DIR", None)
    else:
        env["GRAIN_DATA_DIR"] = str(data_dir)
    return env


def run_grain(args, tmp_path, data_dir=FIXTURES, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """`python -m grain.run <args>` to its end, in `cwd` (tmp_path by default), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "grain.run", *args], cwd=cwd or tmp_path, env=grain_env(tmp_path, data_dir),
        capture_output=True, text=True, timeout=timeout,
    )


def start_grain(args, tmp_path, **popen) -> subprocess.Popen:
    """`python -m grain.run <args>` started in tmp_path (popen: Popen's stdout, stderr, ...)."""
    return subprocess.Popen([sys.executable, "-m", "grain.run", *args], cwd=tmp_path, env=grain_env(tmp_path),
                            text=True, **popen)


def summaries(tmp_path) -> list[Path]:
    """Every summary.json under tmp_path, sorted."""
    return sorted(Path(tmp_path).glob("**/summary.json"))


def readme_commands(section: str = "Running", module: str = "grain.run") -> list[list[str]]:
    """The `python -m <module>` commands of a README section's bash blocks, as argument lists after
    the module (comments dropped)."""
    text = (REPO / "README.md").read_text()
    body = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## )", text, flags=re.S | re.M).group(1)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[1:3] == ["-m", module]:
                commands.append(words[3:])
    return commands


def readme_tiny_run(section: str, option: str, tmp_path) -> tuple[dict, Path]:
    """The README section's grain.run command that holds `option` (e.g. "task=sts"), on model=tiny for
    four steps (its `=/my/...` placeholders dropped: the tiny model stands for the reader's), run from the
    repository root; asserts it succeeded and returns its summary and run dir."""
    [command] = [c for c in readme_commands(section) if option in c]
    args = [arg for arg in command if "=/my/" not in arg]
    result = run_grain([*args, "model=tiny", "trainer.max_steps=4", "logger=csv"], tmp_path, data_dir=None, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = summaries(tmp_path)
    return json.loads(path.read_text()), path.parent

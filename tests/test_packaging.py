"""grain as an installed package: the wheel carries the Hydra configs, so a plain (non-editable) install
runs `python -m grain.run` from any directory."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers.paths import FIXTURES, REPO

# The one-shot check of issue 23: magnitude scores, pruned at one step to the target.
ONE_SHOT = ["model=tiny", "task=sst2", "pruner=magnitude", "sparsity=0.9", "pruner.start=0.5", "pruner.end=0.5",
            "trainer.max_steps=4", "logger=csv", f"paths.data_dir={FIXTURES}"]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow  # ~30 s: a wheel built and installed into a fresh venv (make test-full; the default suite keeps under 10 min)
def test_a_wheel_installed_in_a_fresh_venv_runs_from_another_directory(tmp_path):
    """Build the wheel, install it (not editable, no dependencies) into a fresh venv, and run a tiny job
    from a directory outside the repository. The venv borrows the test environment's dependencies through
    PYTHONPATH, which does not process the editable install's .pth file: only the wheel's grain is found."""
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(REPO)], cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("grain-*.whl"))
    assert "grain/conf/config.yaml" in zipfile.ZipFile(wheel).namelist()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)])

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"], "GRAIN_CACHE_DIR": str(tmp_path / "cache")}
    where = run([str(python), "-c", "import grain.conf; print(grain.conf.CONFIG_DIR)"], cwd=workdir, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    run([str(python), "-m", "grain.run", *ONE_SHOT], cwd=workdir, env=env)

    summary = json.loads(next(workdir.glob("outputs/sst2/tiny/s0.9/*/summary.json")).read_text())
    assert summary["status"] == "completed"
    # one-shot to 0.9 of the prunable units' parameters: reached within one unit below the target
    # (model=tiny: hidden 64, so a unit holds at most 2 * 64 + 2 parameters)
    student = summary["student"]
    prunable = student["encoder_params_dense"] - 2 * 64 * 2  # less the W_O and W_2 output biases of 2 layers
    assert 0.9 - (2 * 64 + 2) / prunable <= student["sparsity"] <= 0.9
    assert student["encoder_linear_sparsity"] < student["sparsity"]

"""DDP under Hydra: the other ranks of a sweep run the sweep in rank 0's sweep dir (grain.launch)."""

import json
import sys

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.strategies.launchers import subprocess_script
from omegaconf import open_dict

from grain.launch import rank_subprocess_cmd, start_ranks_in_the_sweep_dir
from tests.helpers.configs import compose_config
from tests.helpers.runs import run_grain, summaries


def test_a_sweeps_other_ranks_run_it_in_rank_0s_sweep_dir(tmp_path, monkeypatch):
    """Lightning's command for rank 1 adds hydra.run.dir, which a sweep ignores: rank 1 made a second
    multirun/<timestamp>/ of its own. It runs the same sweep (its jobs meet rank 0's, job after job) in rank 0's
    sweep dir, logging to its own file in each job's dir."""
    cfg = compose_config(["trainer=ddp", "sparsity=0.6"], tmp_path)
    sweep_dir = tmp_path / "multirun" / "2026-12-07_01-00-00"
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(sweep_dir / "1_sst2_minilm_s0.6")
        cfg.hydra.runtime.cwd = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    monkeypatch.setattr(sys, "argv", ["grain/run.py", "-m", "trainer=ddp", "sparsity=0.5,0.6"])
    command, cwd = rank_subprocess_cmd(local_rank=1)
    assert command[1:6] == ["-m", "grain.run", "-m", "trainer=ddp", "sparsity=0.5,0.6"]
    assert f'hydra.sweep.dir="{sweep_dir}"' in command and "hydra.job.name=train_ddp_process_1" in command
    assert "hydra.output_subdir=null" in command and cwd == str(tmp_path)
    start_ranks_in_the_sweep_dir()
    assert subprocess_script._hydra_subprocess_cmd is rank_subprocess_cmd


@pytest.mark.slow  # ~2 min: a sweep of two tiny jobs, each on two CPU processes
def test_a_ddp_sweep_in_the_readme_form_leaves_one_multirun_dir(tmp_path):
    result = run_grain(["-m", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "model=tiny", "logger=none",
                        "stages=[teacher,prune]", "trainer.max_steps=3", "sparsity=0.5,0.6"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [sweep] = (tmp_path / "multirun").iterdir()
    found = {json.loads(p.read_text())["sparsity"]: p.parent for p in summaries(tmp_path)}
    assert set(found) == {0.5, 0.6} and all(job.parent == sweep for job in found.values())
    for job in found.values():
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"
        assert (job / "train_ddp_process_1.log").exists()  # rank 1 wrote its log in its job's dir

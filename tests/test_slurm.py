"""SLURM: a requeued job runs in the run directory of its first attempt and resumes there from the
checkpoint Lightning saved on the requeue signal (grain/slurm.py)."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from grain.slurm import run_stamp, slurm_job_label
from tests.helpers.runs import RESUMABLE_RUN, start_grain


def test_the_run_directory_of_a_slurm_job_is_named_by_the_job(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert run_stamp("2026-11-30_21-00-00") == "2026-11-30_21-00-00"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert run_stamp("2026-11-30_21-00-00") == "slurm-4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert slurm_job_label() == "4240_2"  # SLURM_JOB_ID differs per array task; the pair is what requeue keeps


def slurm_env(tmp_path):
    """What sbatch sets for a one-task job, and an `scontrol` that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    return {
        "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "grain-sst2", "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }


@pytest.mark.slow  # ~1-2 min: a tiny run stopped in its prune stage, then requeued to the end
def test_a_requeued_job_resumes_in_its_run_dir_from_the_requeue_checkpoint(tmp_path, monkeypatch):
    for name, value in slurm_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    run = [*RESUMABLE_RUN, "student.checkpoint_every_n_steps=null", "student.epochs=6"]
    first = start_grain(run, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        student_dir = None
        while student_dir is None:  # wait for the prune stage to train a few steps
            assert first.poll() is None, "the run ended before the requeue signal"
            assert time.monotonic() < deadline, "no prune stage"
            logs = list(tmp_path.glob("outputs/**/run.log"))
            if logs and "student: step" in logs[0].read_text():
                student_dir = logs[0].parent / "student"
            time.sleep(0.1)
        first.send_signal(signal.SIGUSR1)  # SLURM's warning before the time limit (--signal=SIGUSR1@90)
        while not (tmp_path / "scontrol.log").exists():
            assert first.poll() is None and time.monotonic() < deadline, "no requeue"
            time.sleep(0.1)
        first.send_signal(signal.SIGTERM)  # then the time limit
        _, stderr = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    [checkpoint] = student_dir.glob("hpc_ckpt_*.ckpt")
    assert torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"] > 0
    run_dir = student_dir.parent
    assert run_dir.name == "slurm-4242"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "stopped"

    requeued = start_grain(run, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # the same job again
    _, stderr = requeued.communicate(timeout=300)
    assert requeued.returncode == 0, stderr[-3000:]
    assert [p.parent for p in tmp_path.glob("outputs/**/summary.json")] == [run_dir], "the first attempt's run dir"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert abs(summary["student"]["sparsity"] - 0.9) < 0.02
    assert f"Restored all states from the checkpoint at {checkpoint}" in (run_dir / "run.log").read_text()


def test_a_requeued_teacher_stage_resumes_from_the_requeue_checkpoint(tmp_path, monkeypatch):
    """Under SLURM the teacher stage leaves the choice to Lightning (its newest hpc_ckpt_<n>.ckpt, saved on
    the requeue signal in the run's teacher dir) over the periodic checkpoint beside the teacher cache;
    elsewhere, or before any requeue, it resumes from that periodic checkpoint."""
    from grain.stages.teacher import resume_from

    run_dir, partial = tmp_path / "slurm-4242", tmp_path / "cache" / "teachers" / "sst2-tiny-key.partial"
    partial.mkdir(parents=True)
    (partial / "last.ckpt").write_bytes(b"periodic")
    assert resume_from(run_dir, partial) == str(partial / "last.ckpt")
    for name, value in slurm_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    assert resume_from(run_dir, partial) == str(partial / "last.ckpt")  # no requeue yet
    (run_dir / "teacher").mkdir(parents=True)
    (run_dir / "teacher" / "hpc_ckpt_1.ckpt").write_bytes(b"requeue")
    assert resume_from(run_dir, partial) is None  # Lightning takes hpc_ckpt_1 (ckpt_path=None under SLURM)

"""Runs under SLURM: one run directory per job, so a requeued job resumes where its first attempt stopped.

Lightning handles the requeue itself (its SLURMEnvironment, detected when the job was started with
`srun`/`sbatch` and SLURM_NTASKS is set): on the requeue signal (`#SBATCH --signal=SIGUSR1@90`) it saves
`<run_dir>/<stage>/hpc_ckpt_<n>.ckpt` and calls `scontrol requeue <job>`; a stage's `fit` started
without `ckpt_path` under SLURM resumes from the newest such checkpoint of its own directory. That
only works if the requeued job, which runs the same command again, lands in the same run directory:
the run directory's last part is therefore `slurm-<job id>` (`slurm-<array job>_<task>` for array
jobs) under SLURM instead of the start time.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def slurm_job_label(environ=os.environ) -> str | None:
    """`<SLURM_ARRAY_JOB_ID>_<SLURM_ARRAY_TASK_ID>` for an array task, `<SLURM_JOB_ID>` for a job, None
    outside SLURM. Both stay the same when SLURM requeues the job."""
    array_job, array_task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return environ.get("SLURM_JOB_ID") or None


def run_stamp(timestamp: str) -> str:
    """The last part of a run directory: `slurm-<job>` under SLURM (see the module docstring), else
    `timestamp` (the start time, as conf/hydra/default.yaml passes it)."""
    label = slurm_job_label()
    return f"slurm-{label}" if label else timestamp


OmegaConf.register_new_resolver("grain_run_stamp", run_stamp, replace=True)

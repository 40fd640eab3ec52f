"""DDP under Hydra: how Lightning starts the other processes of a sweep's jobs.

Lightning starts ranks 1..n-1 of a DDP run by running the script again with the same command line, plus
`hydra.run.dir=<the run dir>` (`_hydra_subprocess_cmd`). In a sweep (`-m`) that command line is the
whole sweep, and it must stay so: rank 1 then runs the same jobs in the same order as rank 0, each job's
fits meeting rank 0's (rank 0's process keeps its process group from job to job and starts no new
ranks). But `hydra.run.dir` means nothing to a sweep: rank 1 made a second `multirun/<timestamp>/` for
its logs. grain starts it in rank 0's sweep dir instead (`hydra.sweep.dir`), writing only its own log
(`train_ddp_process_<rank>.log`) into each job's dir. A single run keeps Lightning's command.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_original_cwd
from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
from lightning.pytorch.strategies.launchers import subprocess_script as pytorch_launcher

LIGHTNING_COMMAND = fabric_launcher._hydra_subprocess_cmd


def rank_subprocess_cmd(local_rank: int) -> tuple[list[str], str]:
    """(command, working dir) that starts DDP rank `local_rank` of the current Hydra job: in a sweep, the
    sweep's command line in rank 0's sweep dir (the job's output dir's parent), with no second copy of
    the .hydra files; in a single run, Lightning's own command."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        command, cwd = LIGHTNING_COMMAND(local_rank)
        return list(command), cwd
    sweep_dir = Path(hydra_cfg.runtime.output_dir).parent  # resolved once: `${now:...}` would differ here
    command = [sys.executable, "-m", "grain.run", *sys.argv[1:], f'hydra.sweep.dir="{sweep_dir}"',
               f"hydra.job.name=train_ddp_process_{local_rank}", "hydra.output_subdir=null"]
    return command, get_original_cwd()


def start_ranks_in_the_sweep_dir() -> None:
    """Make Lightning's subprocess launcher start DDP ranks with `rank_subprocess_cmd` (both of Lightning's
    launchers import the builder by name, so both names are replaced)."""
    for module in (fabric_launcher, pytorch_launcher):
        module._hydra_subprocess_cmd = rank_subprocess_cmd

"""Sweeps (`python -m grain.run -m ...`): the Hydra callback that makes them start and report failures.

- Hydra's sweeper resolves `hydra.sweep.dir` before the first job sets HydraConfig, so the
  `${hydra:runtime.cwd}` under `paths.root_dir` could not be resolved ("HydraConfig was not set");
  the callback sets the sweep's own config as HydraConfig first (each job then sets its own).
- A job that fails (bad value, error) is recorded and the sweep goes on; at its end the failed jobs
  are listed in one line each and the process exits non-zero.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# (job number, its overrides, the error line) of each failed job of this process's sweep.
FAILED_JOBS: list[tuple[int, str, str]] = []
SWEEP_FAILED_EXIT = 1


def record_failure(job_num: int, overrides: list[str], error: str) -> None:
    FAILED_JOBS.append((job_num, " ".join(overrides), error))


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        FAILED_JOBS.clear()
        HydraConfig.instance().set_config(copy.deepcopy(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not FAILED_JOBS:
            return
        sweep_dir = config.hydra.sweep.dir
        for num, overrides, error in FAILED_JOBS:
            print(f"grain: error: sweep job {num} ({overrides}) failed: {error}", file=sys.stderr)
        print(
            f"grain: error: {len(FAILED_JOBS)} sweep job(s) failed; their summary.json under {sweep_dir} "
            f"has status 'failed' and the error",
            file=sys.stderr,
        )
        sys.stderr.flush()
        sys.exit(SWEEP_FAILED_EXIT)

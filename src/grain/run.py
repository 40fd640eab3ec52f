"""Entry point: `python -m grain.run [group=option ...] [key=value ...]` (Hydra; add -m to sweep).

Exit status: 0 when the run (every job of a sweep) completed; 2 for a refused config or other bad
input (one line on stderr); 1 for an error (traceback); 128 + signal number when a signal
(SIGTERM) stopped the run. summary.json records `completed`, `failed` or `stopped` either way.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from pathlib import Path

import hydra
import lightning
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException, OverrideParseException
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from grain.conf import CONFIG_DIR
from grain.config import unknown_trainer_setting, validate_config
from grain.errors import GrainError, disk_full, no_space
from grain.launch import start_ranks_in_the_sweep_dir
from grain.pipeline import results_block, run_pipeline, write_failed_summary
from grain.quiet import quiet_libraries
from grain.stopping import RunStopped, stop_on_signals
from grain.sweep import record_failure

log = logging.getLogger("grain")
BAD_INPUT_EXIT = 2


def remove_empty_run_dir(run_dir: Path, root_dir: Path) -> None:
    """Drop the run dir Hydra made for a config that was refused (it holds no results), and the
    parents that only existed for it, up to the project root."""
    if not run_dir.exists() or any(p.name not in (".hydra", "run.log", "main.log") for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.parents:
        if parent == root_dir or root_dir not in parent.parents:
            break
        try:
            parent.rmdir()  # only succeeds when empty
        except OSError:
            break


def single_log_handler() -> None:
    """Lightning's log lines through the root logger Hydra set up (console and run.log), once each.

    `lightning` prints to its own console handler and also passes each record on (every Lightning INFO
    line came out twice); `lightning.pytorch` and `lightning.fabric`, imported before Hydra configured
    logging, found no root handler and print only to their own (nothing reached run.log). Keep Hydra's."""
    if not logging.getLogger().handlers:
        return
    logging.getLogger("lightning").removeHandler(getattr(lightning, "_console", None))
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True


def job_failed(hydra_cfg, err: BaseException, with_traceback: bool = False) -> None:
    """A sweep job failed: log it and let the sweep go on; it ends non-zero, listing the failures."""
    message = str(err) if isinstance(err, GrainError) else f"{type(err).__name__}: {err}"
    if with_traceback:
        log.exception("job %s failed; its summary.json has the traceback", hydra_cfg.job.num)
    else:
        log.error("job %s failed: %s", hydra_cfg.job.num, message)
    record_failure(hydra_cfg.job.num, list(hydra_cfg.overrides.task), message)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    quiet_libraries()
    start_ranks_in_the_sweep_dir()
    hydra_cfg = HydraConfig.get()
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        target = validate_config(cfg)
    except GrainError as err:
        if sweeping:  # the job dir keeps a summary.json saying why it did not run
            write_failed_summary(cfg, run_dir, err)
            return job_failed(hydra_cfg, err)
        remove_empty_run_dir(run_dir, Path(cfg.paths.root_dir))
        print(f"grain: error: {err}", file=sys.stderr)
        sys.exit(BAD_INPUT_EXIT)
    single_log_handler()
    try:
        with stop_on_signals():
            try:
                summary = run_pipeline(cfg, run_dir, target)
            except InstantiationException as err:  # a GrainError raised while Hydra built an object
                if isinstance(err.__cause__, GrainError):
                    raise err.__cause__ from None
                raise
    except RunStopped as err:
        print(f"grain: {err}; {run_dir}/summary.json has status 'stopped'", file=sys.stderr)
        sys.exit(128 + err.signum)
    except SystemExit as err:  # Lightning ends a run it stopped (SIGTERM, Ctrl-C) with SystemExit, even code 0
        print(f"grain: the run was stopped; {run_dir}/summary.json has status 'stopped'", file=sys.stderr)
        sys.exit(err.code if isinstance(err.code, int) and err.code != 0 else 128 + 15)
    except GrainError as err:
        if sweeping:  # one bad job must not lose the others' results
            return job_failed(hydra_cfg, err)
        print(f"grain: error: {err}", file=sys.stderr)
        sys.exit(BAD_INPUT_EXIT)
    except Exception as err:
        if disk_full(err):  # where no `writing` block named the file: the error's, or the run dir
            err = no_space(getattr(err, "filename", None) or run_dir)
            if sweeping:
                return job_failed(hydra_cfg, err)
            print(f"grain: error: {err}", file=sys.stderr)
            sys.exit(1)
        if sweeping:
            return job_failed(hydra_cfg, err, with_traceback=True)
        raise
    if rank_zero_only.rank == 0:
        print(results_block(summary), flush=True)
    student = summary.get("student") or {}
    return student.get("metric", summary.get("teacher", {}).get("metric"))


def composition_error(err: HydraException, argv: list[str]) -> str:
    """Hydra's multi-line message for a command line it could not compose, as one line naming the
    override the user wrote and the fix."""
    text = str(err)
    cause = str(err.__cause__).strip().splitlines()[0] if err.__cause__ is not None and str(err.__cause__).strip() else ""
    overridden = re.match(r"Could not override '([^']+)'", text)
    if overridden:
        key = overridden.group(1)
        given = next((arg for arg in argv if arg.split("=", 1)[0].lstrip("+~") == key), key)
        if "not in struct" in cause and key.startswith("trainer."):
            return str(unknown_trainer_setting(key, given))
        if "not in struct" in cause:
            return f"{given}: there is no setting {key} (`python -m grain.run --cfg job` lists them all)"
        return f"{given}: {cause or text.splitlines()[0]}"
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return f"{group}={option} is not an option of {group}; choose one of {', '.join(options)}"
    if isinstance(err, OverrideParseException):  # its message does not say which override
        override = getattr(err, "override", None) or " ".join(argv)
        return f"{override}: {text.splitlines()[0]} (Hydra's override syntax: key=value, +key=value, ~key)"
    return " ".join(line.strip() for line in [*text.splitlines(), cause] if line.strip())


def cli() -> None:
    """`python -m grain.run`: a command line Hydra cannot compose (an unknown setting or option, a bad
    override) is one line and exit 2, as any bad input, instead of Hydra's message with a hint about
    HYDRA_FULL_ERROR."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra raises instead of printing: reported here
    try:
        main()
    except HydraException as err:
        print(f"grain: error: {composition_error(err, sys.argv[1:])}", file=sys.stderr)
        sys.exit(BAD_INPUT_EXIT)


if __name__ == "__main__":
    cli()

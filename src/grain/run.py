"""Entry point: `python -m grain.run [group=option ...] [key=value ...]` (Hydra; add -m to sweep)."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig

from grain.config import validate_config
from grain.errors import GrainError

log = logging.getLogger("grain")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


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


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from grain.pipeline import run_pipeline

    hydra_cfg = HydraConfig.get()
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        validate_config(cfg)
    except GrainError as err:
        remove_empty_run_dir(Path(hydra_cfg.runtime.output_dir), Path(cfg.paths.root_dir))
        print(f"grain: error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        try:
            summary = run_pipeline(cfg, hydra_cfg.runtime.output_dir)
        except InstantiationException as err:  # a GrainError raised while Hydra built an object
            if isinstance(err.__cause__, GrainError):
                raise err.__cause__ from None
            raise
    except GrainError as err:
        if sweeping:  # one bad job must not lose the others' results
            log.error("job %s failed: %s", hydra_cfg.job.num, err)
            return None
        print(f"grain: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        if sweeping:
            log.exception("job %s failed; its summary.json has the traceback", hydra_cfg.job.num)
            return None
        raise
    student = summary.get("student") or {}
    return student.get("metric", summary.get("teacher", {}).get("metric"))


if __name__ == "__main__":
    main()

"""summary.json: the one place a run's numbers are written (reports and logs read them from here)."""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import version
from pathlib import Path

import hydra
import lightning
import torch
import transformers

from grain.errors import writing

SUMMARY_FILE = "summary.json"


def versions() -> dict[str, str]:
    return {
        "grain": version("grain"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "hydra": hydra.__version__,
    }


def write_summary(run_dir: Path, summary: dict) -> Path:
    """Write atomically (temp file + rename), so a reader never sees half a summary."""
    path = Path(run_dir) / SUMMARY_FILE
    tmp = path.with_suffix(".json.tmp")
    with writing(path):
        tmp.write_text(json.dumps(summary, indent=2, default=float) + "\n")
        os.replace(tmp, path)
    return path


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())


def model_dir_of(path: Path) -> Path:
    """The compact model a path names: `<run>/compact` for a run dir (with summary.json), else `path`."""
    path = Path(path)
    return path / "compact" if (path / SUMMARY_FILE).exists() else path

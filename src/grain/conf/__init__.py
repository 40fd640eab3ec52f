"""grain's Hydra configs (package data: `conf/config.yaml` and one folder per group)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent

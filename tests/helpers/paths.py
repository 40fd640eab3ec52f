"""Where things are: the repository, grain's configs, the tests' tiny data, the offline data directory."""

from __future__ import annotations

import os
from pathlib import Path

from grain.conf import CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = CONFIG_DIR
FIXTURES = REPO / "tests" / "fixtures"
SHARED_DATA = Path(os.environ.get("GRAIN_DATA_DIR", REPO.parent / "shared" / "data"))

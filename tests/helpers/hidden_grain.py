"""The start of a Python program run where grain cannot be imported: a meta path finder refuses it, as if
it were not installed (a compact folder's own code must load there)."""

import os
import subprocess
import sys

HIDE_GRAIN = """\
import json, sys

class HideGrain:
    def find_spec(self, name, path=None, target=None):
        if name == "grain" or name.startswith("grain."):
            raise ImportError("grain is hidden in this process")

sys.meta_path.insert(0, HideGrain())
"""


def run_without_grain(program: str, *args: str, tmp_path) -> None:
    """Run `program` (HIDE_GRAIN + its code) with `args` in tmp_path, remote code cached there; asserts it
    succeeded."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", program, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

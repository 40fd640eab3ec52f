"""The start of a Python program run where grain cannot be imported: a meta path finder refuses it, as if
it were not installed (a compact folder's own code must load there)."""

HIDE_GRAIN = """\
import json, sys

class HideGrain:
    def find_spec(self, name, path=None, target=None):
        if name == "grain" or name.startswith("grain."):
            raise ImportError("grain is hidden in this process")

sys.meta_path.insert(0, HideGrain())
"""

"""Cache keys and the tokenized-dataset cache: what identifies a task's data, and a dataset saved once per key."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import datasets

from grain.errors import writing


def fingerprint(*parts: Any) -> str:
    """A 16-hex-digit key of `parts` (anything json can write, other objects by `str`)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_signature(path: Path) -> list:
    """Name and content hash of a data file: a copy of the same data (new path, new mtime) keeps its
    cached teachers and tokenized splits; any edit to the content invalidates them."""
    path = Path(path)
    stat = path.stat()
    return [path.name, _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)]


@functools.lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hash of a file, computed once per process for a given size and mtime (the cache key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_dataset(cache_dir: Path | None, key: str, build: Callable[[], datasets.Dataset]) -> datasets.Dataset:
    """Load a tokenized dataset from `cache_dir/tokenized/key`, building and saving it when absent.

    The dataset is written to a temporary dir and renamed, so an interrupted run leaves no half cache.
    """
    if cache_dir is None:
        return build()
    target = Path(cache_dir) / "tokenized" / key
    if target.exists():
        return datasets.load_from_disk(str(target))
    dataset = build()
    tmp = target.with_name(f"{key}.tmp{os.getpid()}")
    with writing(target):
        dataset.save_to_disk(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))

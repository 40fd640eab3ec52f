"""Errors for bad user input: each message names the value, what was expected and the fix; and running out
of disk space, named by the file being written."""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path


class GrainError(ValueError):
    """A problem with the user's configuration, data or checkpoint (shown without a traceback)."""


def disk_full(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, is a write that found no space (ENOSPC, EDQUOT;
    libraries that wrap it keep the message)."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def free_space(path: Path) -> str:
    """The free space on the file system of `path` (its nearest existing parent), e.g. `0.1 GB free`."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return f"{shutil.disk_usage(path).free / 1e9:.1f} GB free"
    except OSError:
        return "free space unknown"


def no_space(path) -> GrainError:
    """The error for a write to `path` (the file or folder being written) that found the disk full."""
    return GrainError(
        f"no space left on the device writing {path} ({free_space(path)}); free some space, or write "
        f"elsewhere (paths.output_dir / PROJECT_ROOT for runs, GRAIN_CACHE_DIR for caches)"
    )


@contextlib.contextmanager
def writing(path):
    """Within the block, a write that runs out of disk space becomes a GrainError naming `path` (the file
    or folder being written) and the fix, instead of a library's traceback."""
    try:
        yield
    except Exception as err:
        if not disk_full(err):
            raise
        raise no_space(path) from None

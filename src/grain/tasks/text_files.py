"""The user's text files are UTF-8: a file in another encoding is named, with its likely encoding and the
fix, instead of a parser's complaint about its header or a decode traceback."""

from __future__ import annotations

import functools
from pathlib import Path

import charset_normalizer

from grain.errors import GrainError

TEXT_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".txt", ".conll", ".iob", ".iob2", ".bio")


def check_utf8(path: Path) -> None:
    """Raise GrainError naming `path`, the first byte that is not UTF-8 and the encoding the file likely has
    (charset_normalizer), where it is not UTF-8 text. Files of other suffixes (parquet) are not text."""
    path = Path(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        _check_utf8(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _check_utf8(path: str, size: int, mtime_ns: int) -> None:
    """Once per file content (size and mtime) and process."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        best = charset_normalizer.from_bytes(data).best()
        guess = best.encoding if best is not None else "unknown"
        raise GrainError(
            f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}; it looks like {guess}); "
            f"save it as UTF-8, e.g. iconv -f {guess} -t utf-8 {Path(path).name} > utf8-{Path(path).name}"
        ) from None

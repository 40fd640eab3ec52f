"""The user's own data files: which `datasets` builder reads a file (from its extension), loading a
split from local files or a hub dataset, and the one-line errors that name the file and the fix.

Used by the generic tasks (`task=text_classification`, `task=token_classification`,
`task=question_answering`); the GLUE/SQuAD/CoNLL modules keep their own readers.
"""

from __future__ import annotations

import csv
import math
from contextlib import contextmanager
from pathlib import Path

import datasets
from omegaconf import DictConfig

from grain.errors import GrainError
from grain.tasks.text_files import check_utf8

# extension -> (datasets builder, its keyword arguments)
FORMATS = {
    ".csv": ("csv", {}),
    # tab-separated as GLUE writes them: no quoting, so a lone `"` in a sentence stays a character
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
SPLIT_KEYS = {"train": "train_file", "validation": "validation_file", "test": "test_file"}


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextmanager
def quiet_progress():
    """No `Generating train split` bars while a small file loads (they would clutter the run log)."""
    was_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def resolve_file(task: str, split: str, value: str | None, formats=tuple(FORMATS), kind: str | None = None) -> Path:
    """The local file of a split (`task.<split>_file`), existing and named with one of `formats`
    (extensions; `kind` says what such a file is in the errors). Raises GrainError naming the setting."""
    key = f"task.{SPLIT_KEYS[split]}"
    kind = kind or f"a {'/'.join(e[1:] for e in formats)} file"
    if not value:
        raise GrainError(
            f"task={task}: no {split} data; give {key}=<path to {kind}> (or task.dataset_name=<hub dataset> for a "
            f"dataset from the hub)"
        )
    path = Path(str(value)).expanduser()
    if not path.is_file():
        where = path.parent if str(path.parent) not in ("", ".") else Path(".")
        if where.is_dir():
            present = sorted(p.name for p in where.iterdir() if p.suffix.lower() in formats)[:8]
            around = f" ({where.resolve()} has {', '.join(present) if present else f'no {kind[2:]}s'})"
        else:
            around = f" (no directory {where})"
        raise GrainError(f"{key}={value}: no such file{around}; give the path of your {split} file")
    if path.suffix.lower() not in formats:
        names = ", ".join(formats[:-1]) + f" or {formats[-1]}" if len(formats) > 1 else formats[0]
        raise GrainError(
            f"{key}={value}: unknown format '{path.suffix or '(no extension)'}'; expected {kind}: name the file "
            f"{names} (the extension says how it is read)"
        )
    return path.resolve()


def load_file(path: Path, cache_dir: Path | None, json_field: str | None = None) -> datasets.Dataset:
    """All rows of one local file as a Dataset (read with `datasets`, cached as Arrow under cache_dir)."""
    check_utf8(path)
    builder, kwargs = FORMATS[path.suffix.lower()]
    kwargs = dict(kwargs)
    if builder == "json" and json_field:
        kwargs["field"] = json_field
    try:
        with quiet_progress():
            return datasets.load_dataset(
                builder, data_files={"train": str(path)}, split="train",
                cache_dir=str(Path(cache_dir) / "datasets") if cache_dir else None, **kwargs,
            )
    except Exception as err:  # pyarrow/pandas parse errors, a JSON object without the list of rows, ...
        if path.stat().st_size == 0 or "corresponds to no data" in str(err) or "No columns to parse" in str(err):
            raise GrainError(f"{path}: no rows (an empty file); give a file with at least one example") from None
        hint = {
            "csv": "a header line with the column names, then one row per line",
            "json": "one JSON object per line (.jsonl), a JSON list of objects, or task.json_field=<key> "
                    "naming the list inside a JSON object",
            "parquet": "a parquet table",
        }[builder]
        kind = path.suffix.lstrip(".").lower()
        raise GrainError(f"{path}: cannot be read as {kind} ({first_line(err)}); expected {hint}") from None


def load_hub_split(task: str, name: str, config: str | None, split: str, hub_split: str | None,
                   cache_dir: Path | None) -> datasets.Dataset:
    key = {"train": "task.train_split", "validation": "task.validation_split", "test": "task.test_split"}[split]
    if not hub_split:
        raise GrainError(f"task={task}: no {split} split named for task.dataset_name={name}; set {key}=<split name>")
    try:
        with quiet_progress():
            return datasets.load_dataset(name, config, split=hub_split)
    except ValueError as err:
        if "split" in str(err).lower():
            raise GrainError(
                f"task.dataset_name={name}: no split '{hub_split}' ({first_line(err)}); set {key}=<one of its splits>"
            ) from None
        raise GrainError(f"task.dataset_name={name} (task.dataset_config={config}): {first_line(err)}") from None
    except Exception as err:  # not on the hub, no network, a config the dataset lacks
        raise GrainError(
            f"task.dataset_name={name} (task.dataset_config={config}) cannot be loaded: {first_line(err)}; give a "
            f"dataset name (and config) reachable from this machine, or local files with task.train_file=... "
            f"task.validation_file=..."
        ) from None


def require_columns(where: str, dataset: datasets.Dataset, columns: dict[str, str]) -> None:
    """columns: {setting: column name}; a missing one is named with the columns the data has."""
    present = list(dataset.column_names)
    for setting, column in columns.items():
        if column not in present:
            raise GrainError(
                f"{where}: no column '{column}' ({setting}); its columns are {present}: set {setting} to one of them"
            )


def require_texts(where: str, dataset: datasets.Dataset, columns: dict[str, str]) -> None:
    """columns: {setting: column name}; a row without text in one (None or blank: it would be trained on as
    "") is named with the setting and the fix."""
    for setting, column in columns.items():
        empty = next((row for row, text in enumerate(dataset[column], start=1) if text is None or not str(text).strip()),
                     None)
        if empty is not None:
            raise GrainError(f"{where}: row {empty} has no text in column '{column}' ({setting}); fill it in or drop "
                             f"the row")


def as_number(value) -> float:
    """A cell as a float, NaN where it is no number (empty, text)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def require_rows(where: str, dataset: datasets.Dataset) -> None:
    if len(dataset) == 0:
        raise GrainError(f"{where}: no rows (an empty split); give a file with at least one example")


class OwnDataSource:
    """Mixin for the data modules of the user's own data (listed first among the bases): where each
    split comes from, local files or a hub dataset's named splits, and the checks of that data at
    config validation (`check_data`, through the data module's `check(needs_train)`).

    Its keyword arguments are the task config's source settings: `train_file`, `validation_file`,
    `test_file` (local files), or `dataset_name`, `dataset_config` and the hub's `train_split`,
    `validation_split`, `test_split`; the others go on to the Task."""

    def __init__(self, *, train_file: str | None = None, validation_file: str | None = None,
                 test_file: str | None = None, dataset_name: str | None = None, dataset_config: str | None = None,
                 train_split: str | None = "train", validation_split: str | None = "validation",
                 test_split: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.files = {"train": train_file, "validation": validation_file, "test": test_file}
        self.dataset_name = dataset_name
        self.dataset_config = dataset_config
        self.hub_splits = {"train": train_split, "validation": validation_split, "test": test_split}

    @property
    def from_hub(self) -> bool:
        return bool(self.dataset_name)

    def has_split(self, split: str) -> bool:
        return bool(self.hub_splits[split] if self.from_hub else self.files[split])

    @property
    def eval_splits(self) -> list[str]:
        return ["validation"] + (["test"] if self.has_split("test") else [])

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        """Load and check every split the run `cfg` reads (`check`); raises GrainError naming the
        file or setting and the fix."""
        cls.unloaded(cfg).check(needs_train=cls.trains(cfg))

    @classmethod
    def label_names(cls, cfg: DictConfig) -> list[str] | None:
        """The labels of the user's data (`labels`: from its training split unless task.labels lists
        them; checked by `check_data` before)."""
        return getattr(cls.unloaded(cfg), "labels", None)

    def check_source(self) -> None:
        """Refuse a hub dataset and local files given together (GrainError naming both)."""
        if self.from_hub and any(self.files.values()):
            given = [f"task.{split}_file" for split, f in self.files.items() if f]
            raise GrainError(
                f"task.dataset_name={self.dataset_name} and {', '.join(given)} are both set; read either a hub "
                f"dataset or your files (task.dataset_name=null)"
            )

    def where(self, split: str) -> str:
        """How the errors name a split: its file, or the hub dataset and split."""
        if self.from_hub:
            return f"task.dataset_name={self.dataset_name} split '{self.hub_splits[split]}'"
        return str(self.files[split])

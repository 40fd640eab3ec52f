"""GLUE sentence(-pair) classification: SST-2, MNLI, QNLI, QQP.

Reads GLUE TSV files from the data directory (`paths.data_dir`, env GRAIN_DATA_DIR) by header
names, or, when no data directory is set, the `glue` dataset from the hub.
"""

from __future__ import annotations

import csv
from pathlib import Path

import datasets

from grain.errors import GrainError
from grain.tasks.cache import file_signature
from grain.tasks.classification.task import ClassificationTask
from grain.tasks.text_files import check_utf8


def read_tsv(path: Path, columns: list[str | None], labels: list[str]) -> datasets.Dataset:
    """Read a GLUE TSV into {text_a, text_b, label} rows; labels map to their index in `labels`."""
    text_a_key, text_b_key, label_key = columns
    label_ids = {name: i for i, name in enumerate(labels)}
    rows = {"text_a": [], "text_b": [], "label": []}
    check_utf8(path)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        needed = [key for key in columns if key]
        missing = [key for key in needed if key not in (reader.fieldnames or [])]
        if missing:
            raise GrainError(
                f"{path}: header {reader.fieldnames} lacks column(s) {missing}; expected a GLUE TSV "
                f"with columns {needed}"
            )
        for line_no, row in enumerate(reader, start=2):
            label = (row[label_key] or "").strip()
            if label not in label_ids:
                raise GrainError(
                    f"{path}, line {line_no}: unknown label '{label}'; the task expects one of {labels}. "
                    f"Check that the file belongs to this task (task=...)"
                )
            for key in (k for k in (text_a_key, text_b_key) if k):  # an empty text would be trained on as ""
                if not (row[key] or "").strip():
                    raise GrainError(f"{path}, line {line_no}: no text in column '{key}'; fill it in or drop the line")
            rows["text_a"].append(row[text_a_key])
            rows["text_b"].append(row[text_b_key] if text_b_key else None)
            rows["label"].append(label_ids[label])
    return datasets.Dataset.from_dict(rows)


class GlueDataModule(ClassificationTask):
    """A GLUE task's splits: the TSV files under `data_dir/local_subdir`, or the hub's glue/`hub_name`.

    labels: the label values of the TSV files, in id order (SST-2's "0", "1"); label_names: the dataset's
    names of those labels (the hub's ClassLabel names: "negative", "positive"), which the saved models'
    `id2label` carry (default: the values)."""

    def __init__(
        self,
        task_name: str,
        hub_name: str,
        local_subdir: str,
        local_files: dict[str, str],
        hub_splits: dict[str, str],
        local_columns: list[str | None],
        hub_columns: list[str | None],
        labels: list[str],
        label_names: list[str] | None = None,
        optional_splits: list[str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.task_name = task_name
        self.hub_name = hub_name
        self.local_subdir = local_subdir
        self.local_files = dict(local_files)
        self.hub_splits = dict(hub_splits)
        self.local_columns = list(local_columns)
        self.hub_columns = list(hub_columns)
        self.file_labels = [str(label) for label in labels]  # as the TSV files write them, in id order
        # as the dataset names them (the hub's ClassLabel names), for the models' id2label
        self.labels = [str(name) for name in (label_names or labels)]
        self.optional_splits = list(optional_splits or [])

    @classmethod
    def label_names(cls, cfg) -> list[str]:
        module = cfg.task.datamodule
        return [str(name) for name in (module.get("label_names") or module.labels)]

    @classmethod
    def hub_source(cls, cfg) -> tuple[str, str]:
        return "glue", cfg.task.datamodule.hub_name

    @classmethod
    def local_files_hint(cls, cfg) -> str:
        module = cfg.task.datamodule
        return ", ".join(f"{module.local_subdir}/{name}" for name in module.local_files.values())

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def sentence_pairs(self) -> bool:
        return bool(self.local_columns[1])

    @property
    def eval_splits(self) -> list[str]:
        splits = ["validation"]
        for split in self.optional_splits:
            if self.data_dir is None or (self.data_dir / self.local_subdir / self.local_files[split]).exists():
                splits.append(split)
        return splits

    def source_signature(self, split: str) -> list:
        if self.data_dir is None:
            return ["hub", "glue", self.hub_name, self.hub_splits[split]]
        return file_signature(self._local_file(split))

    def _local_file(self, split: str) -> Path:
        path = self.data_dir / self.local_subdir / self.local_files[split]
        if not path.exists():
            present = sorted(p.name for p in path.parent.glob("*.tsv")) if path.parent.exists() else []
            raise GrainError(
                f"task {self.task_name}: no '{split}' split at {path} (that folder has {present or 'nothing'}). "
                f"Point GRAIN_DATA_DIR at a GLUE directory that has {self.local_subdir}/{self.local_files[split]}, "
                f"or unset GRAIN_DATA_DIR to load glue/{self.hub_name} from the hub"
                + (" (or give a fine-tuned model with teacher.path=... and skip fine-tuning)" if split == "train" else "")
            )
        return path

    def load_split(self, split: str) -> datasets.Dataset:
        if self.data_dir is not None:
            return read_tsv(self._local_file(split), self.local_columns, self.file_labels)
        raw = datasets.load_dataset("glue", self.hub_name, split=self.hub_splits[split])
        text_a, text_b, label = self.hub_columns
        return datasets.Dataset.from_dict({
            "text_a": raw[text_a],
            "text_b": raw[text_b] if text_b else [None] * len(raw),
            "label": raw[label],
        })

"""`task=text_classification`: sentence or sentence-pair classification (or regression) on the user's
own data: local csv/tsv/json/jsonl/parquet files (the format from the extension) or a hub dataset.

Labels are the training split's label values, sorted (numerically when they are all numbers), unless
`task.labels` lists them (then that order); a hub dataset's ClassLabel names keep the dataset's order.
`task.num_labels=1` makes it a regression task (float labels, Pearson/Spearman). Everything the data
could get wrong (a missing file, split or column, an empty split, a dev label the training split
lacks) is checked at config validation (`check_data`), before anything trains, in one line that
names the file and the fix.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import datasets
import torch
from omegaconf import DictConfig

from grain.errors import GrainError
from grain.tasks.cache import file_signature
from grain.tasks.classification.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, TextClassificationEvaluator
from grain.tasks.classification.task import ClassificationTask
from grain.tasks.own_data import (
    OwnDataSource,
    as_number,
    load_file,
    load_hub_split,
    require_columns,
    require_rows,
    require_texts,
    resolve_file,
)


def _label_name(value) -> str | None:
    """A label value as its name: 1, 1.0 and "1" are all "1"; None (an empty cell) stays None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def sorted_labels(names: set[str]) -> list[str]:
    """Label names in a stable order: numerically when they are all numbers ("2" before "10"), else as text."""
    try:
        return sorted(names, key=lambda name: (float(name), name))
    except ValueError:
        return sorted(names)


class TextClassificationDataModule(OwnDataSource, ClassificationTask):
    """`task=text_classification`: the user's own files or hub dataset, with the label column mapped to ids."""

    def __init__(
        self,
        task_name: str = "text_classification",
        text_columns: list[str] = ("sentence",),
        label_column: str = "label",
        labels: list | None = None,
        num_labels: int | None = None,
        metric: str = "accuracy",
        json_field: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.task_name = task_name
        self.text_columns = [text_columns] if isinstance(text_columns, str) else list(text_columns or [])
        self.label_column = label_column
        self.given_labels = None if labels is None else [_label_name(label) for label in labels]
        self.given_num_labels = num_labels
        self.metric = metric
        self.json_field = json_field
        self._tables: dict[str, datasets.Dataset] = {}
        self._labels: list[str] | None = None

    # --- where the data is --------------------------------------------------------------------------
    @property
    def regression(self) -> bool:
        return self.given_num_labels == 1

    def _path(self, split: str) -> Path:
        return resolve_file(self.task_name, split, self.files[split])

    def source_signature(self, split: str) -> list:
        if self.from_hub:
            return ["hub", self.dataset_name, self.dataset_config, self.hub_splits[split]]
        return file_signature(self._path(split))

    def cache_signature(self) -> Any:
        return [self.text_columns, self.label_column, self.labels, self.num_labels, self.json_field]

    def table(self, split: str) -> datasets.Dataset:
        """The split's rows as they are in the file (all columns), checked for rows and columns."""
        if split not in self._tables:
            if self.from_hub:
                table = load_hub_split(self.task_name, self.dataset_name, self.dataset_config, split,
                                       self.hub_splits[split], self.cache_dir)
            else:
                table = load_file(self._path(split), self.cache_dir, self.json_field)
            where = self.where(split)
            require_rows(where, table)
            columns = {f"task.text_columns[{i}]": column for i, column in enumerate(self.text_columns)}
            require_columns(where, table, {**columns, "task.label_column": self.label_column})
            require_texts(where, table, columns)
            self._tables[split] = table
        return self._tables[split]

    # --- labels ------------------------------------------------------------------------------------
    def _class_names(self, table: datasets.Dataset) -> list[str] | None:
        feature = table.features.get(self.label_column)
        return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None

    def label_values(self, split: str) -> list[str | None]:
        """The split's label per row as a name (None where the cell is empty)."""
        table = self.table(split)
        values = table[self.label_column]
        names = self._class_names(table)
        if names is not None:  # ClassLabel ints; -1 marks an unlabelled row (e.g. GLUE's test splits)
            return [names[v] if v is not None and v >= 0 else None for v in values]
        return [_label_name(v) for v in values]

    @property
    def labels(self) -> list[str] | None:
        """The label names, in the order of the classifier's rows (None for regression)."""
        if self.regression:
            return None
        if self._labels is None:
            if self.given_labels is not None:
                self._labels = list(self.given_labels)
            else:
                names = self._class_names(self.table("train"))
                if names is not None:
                    self._labels = names
                else:
                    values = self.label_values("train")
                    self._missing_label(self.where("train"), values)
                    self._labels = sorted_labels(set(values))
        return self._labels

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.labels)

    def _missing_label(self, where: str, values: list) -> None:
        if None in values:
            row = values.index(None) + 1
            raise GrainError(
                f"{where}: row {row} has no label (column '{self.label_column}' is empty there); label every "
                f"row or drop the unlabelled ones"
            )

    def label_ids(self, split: str) -> list:
        """Per row the label's index in `labels` (a float for regression), every label checked."""
        where = self.where(split)
        if self.regression:
            values = self.table(split)[self.label_column]
            out = []
            for row, value in enumerate(values, start=1):
                number = as_number(value)
                if math.isnan(number):
                    raise GrainError(
                        f"{where}: row {row} has label {value!r} in column '{self.label_column}', not a number; "
                        f"task.num_labels=1 is regression (a number per row); drop task.num_labels=1 to classify"
                    )
                out.append(number)
            return out
        values = self.label_values(split)
        self._missing_label(where, values)
        ids = {name: i for i, name in enumerate(self.labels)}
        for row, value in enumerate(values, start=1):
            if value not in ids:
                if self.given_labels is not None:
                    fix = f"add it to task.labels={self.labels} or fix that row"
                    origin = "task.labels"
                else:
                    fix = (f"add training examples with it, or list every label with task.labels=[...] "
                           f"(the training split's are {self.labels})")
                    origin = f"the training split ({self.where('train')})"
                raise GrainError(f"{where}: row {row} has label '{value}', which {origin} lacks; {fix}")
        return [ids[value] for value in values]

    # --- checks before training -------------------------------------------------------------------
    def check(self, needs_train: bool = True) -> None:
        """Load and check every split this run uses: settings, files, rows, columns, labels."""
        if not self.text_columns or len(self.text_columns) > 2:
            raise GrainError(
                f"task.text_columns={self.text_columns}: give one text column or a pair, e.g. "
                f"task.text_columns=[sentence] or task.text_columns=[premise,hypothesis]"
            )
        self.check_source()
        if self.given_num_labels is not None and (
            isinstance(self.given_num_labels, bool) or not isinstance(self.given_num_labels, int)
            or self.given_num_labels < 1
        ):
            raise GrainError(
                f"task.num_labels={self.given_num_labels!r}; give null (from the labels), 1 (regression) or the "
                f"number of labels"
            )
        allowed = REGRESSION_METRICS if self.regression else CLASSIFICATION_METRICS
        if self.metric not in allowed:
            kind = "regression (task.num_labels=1)" if self.regression else "classification"
            raise GrainError(f"task.metric={self.metric!r} is not a {kind} metric; choose one of {list(allowed)}")
        if self.given_labels is not None:
            if self.regression:
                raise GrainError("task.labels is set with task.num_labels=1 (regression); drop one of them")
            if len(set(self.given_labels)) != len(self.given_labels) or None in self.given_labels:
                raise GrainError(f"task.labels={self.given_labels} has repeated or empty names; list each label once")
        if needs_train or (self.given_labels is None and not self.regression):
            self.label_ids("train")  # also derives the labels from it
        for split in self.eval_splits:
            self.label_ids(split)
        if not self.regression:
            if len(self.labels) < 2:
                raise GrainError(
                    f"{self.where('train')}: every row has the label {self.labels}; a classifier needs at least two "
                    f"labels (task.num_labels=1 for regression on numbers)"
                )
            if self.given_num_labels not in (None, len(self.labels)):
                raise GrainError(
                    f"task.num_labels={self.given_num_labels} but there are {len(self.labels)} labels {self.labels}; "
                    f"drop task.num_labels (it is taken from the labels) or fix task.labels"
                )

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        """The data checks of every own-data task, then: regression is not distilled with KD."""
        module = cls.unloaded(cfg)
        module.check(needs_train=cls.trains(cfg))
        distill = cfg.get("distillation") or {}
        if module.regression and "prune" in cfg.stages and distill.get("score_loss") == "kd" and distill.get("kd_weight"):
            raise GrainError(
                "task.num_labels=1 (regression) with distillation.score_loss=kd: KD compares softmaxes, which are "
                "constant for one output, so the student's head would learn nothing; use distillation.score_loss=mse "
                "(the teacher's scores) or null"
            )

    # --- rows and features ------------------------------------------------------------------------
    @property
    def sentence_pairs(self) -> bool:
        return len(self.text_columns) == 2

    def load_split(self, split: str) -> datasets.Dataset:
        table = self.table(split)
        labels = self.label_ids(split)

        def text(column: str) -> list[str]:
            return ["" if value is None else str(value) for value in table[column]]

        return datasets.Dataset.from_dict({
            "text_a": text(self.text_columns[0]),
            "text_b": text(self.text_columns[1]) if len(self.text_columns) == 2 else [None] * len(table),
            "label": labels,
        })

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.collator(features)
        if self.regression:
            batch["labels"] = batch["labels"].float()
        return batch

    def make_evaluator(self, split: str) -> TextClassificationEvaluator:
        return TextClassificationEvaluator(self.num_labels)

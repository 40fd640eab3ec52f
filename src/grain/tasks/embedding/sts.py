"""`task=sts`: semantic textual similarity on the user's own pairs (or a hub dataset such as
`sentence-transformers/stsb`): the Spearman (and Pearson) correlation between the cosine of the two
sentences' embeddings and the gold similarity scores, as sentence-transformers'
`EmbeddingSimilarityEvaluator` computes it (scipy.stats; Reimers and Gurevych 2019, "Sentence-BERT", sec. 4).

An eval split's rows are each pair's first sentences (kind 0) and second sentences (kind 1), with the
pair's position (`row`); the evaluator embeds them all and correlates the pairs' cosines with the scores.
The distillation text (unlabelled) is `train_file` (a .txt file, one text per line, or a pairs file whose
sentences are used), a hub dataset's training split, or, with neither, the validation pairs' own sentences
(their scores are never trained on).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import datasets

from grain.errors import GrainError
from grain.tasks.base import seeded_subset
from grain.tasks.cache import file_signature
from grain.tasks.embedding.task import EmbeddedRows, EmbeddingTask
from grain.tasks.own_data import (
    FORMATS,
    OwnDataSource,
    as_number,
    load_file,
    load_hub_split,
    require_columns,
    require_rows,
    require_texts,
    resolve_file,
)
from grain.tasks.text_files import check_utf8

FIRST, SECOND = 0, 1
METRICS = ("spearman", "pearson")


def similarity_correlations(gold: list[float], cosines: list[float]) -> dict[str, float]:
    """Spearman's and Pearson's correlation of `cosines` with the `gold` scores (scipy.stats, as
    sentence-transformers' EmbeddingSimilarityEvaluator); NaN where either side is constant."""
    from scipy.stats import pearsonr, spearmanr  # noqa: PLC0415  (a dependency of the embeddings extra)

    return {"spearman": float(spearmanr(gold, cosines).statistic), "pearson": float(pearsonr(gold, cosines).statistic)}


class StsEvaluator(EmbeddedRows):
    """Embeds one eval split's first and second sentences and correlates each pair's cosine with its gold
    score (`similarity_correlations`)."""

    def __init__(self, embed, scores: list[float]):
        super().__init__(embed)
        self.scores = scores

    def compute(self) -> dict[str, float]:
        first, second = self.by_kind(FIRST, len(self.scores)), self.by_kind(SECOND, len(self.scores))
        cosines = (first * second).sum(-1)
        return similarity_correlations(self.scores, cosines.tolist())


class StsDataModule(OwnDataSource, EmbeddingTask):
    """`task=sts`: pairs {`sentence_columns`[0], `sentence_columns`[1], `score_column`} in local
    csv/tsv/json/jsonl/parquet files (`validation_file`, `test_file`) or a hub dataset's splits; distilled
    on `train_file` (also .txt: one text per line) or the hub's training split, else on the validation
    pairs' sentences."""

    def __init__(self, task_name: str = "sts", sentence_columns: list[str] = ("sentence1", "sentence2"),
                 score_column: str = "score", json_field: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.task_name = task_name
        self.sentence_columns = [sentence_columns] if isinstance(sentence_columns, str) else list(sentence_columns)
        self.score_column = score_column
        self.json_field = json_field
        self._tables: dict[str, datasets.Dataset] = {}  # `table`, read once per split

    def _train_path(self) -> Path:
        return resolve_file(self.task_name, "train", self.files["train"], formats=(*FORMATS, ".txt"))

    def _distills_on_validation(self) -> bool:
        return not self.has_split("train")

    def source_signature(self, split: str) -> list:
        if split == "train" and self._distills_on_validation():
            split = "validation"
        if self.from_hub:
            return ["hub", self.dataset_name, self.dataset_config, self.hub_splits[split]]
        path = self._train_path() if split == "train" else resolve_file(self.task_name, split, self.files[split])
        return file_signature(path)

    def cache_signature(self) -> Any:
        return [self.sentence_columns, self.score_column, self.json_field, self.max_eval_samples]

    def _max_samples(self, split: str) -> int | None:
        return self.max_train_samples if split == "train" else None  # pairs are subset in `table`

    def table(self, split: str, scored: bool = True) -> datasets.Dataset:
        """A split's pairs as they are in the file or hub split, checked: rows, the sentence columns
        (`scored`: and the score column) and no empty sentence."""
        if split not in self._tables:
            if self.from_hub:
                table = load_hub_split(self.task_name, self.dataset_name, self.dataset_config, split,
                                       self.hub_splits[split], self.cache_dir)
            else:
                table = load_file(resolve_file(self.task_name, split, self.files[split]), self.cache_dir, self.json_field)
            where = self.where(split)
            require_rows(where, table)
            columns = {f"task.sentence_columns[{i}]": c for i, c in enumerate(self.sentence_columns)}
            require_columns(where, table, {**columns, **({"task.score_column": self.score_column} if scored else {})})
            require_texts(where, table, columns)
            # eval splits: `max_eval_samples` pairs (seeded), both sentences and the score of each
            self._tables[split] = table if split == "train" else seeded_subset(table, self.max_eval_samples, self.seed)
        return self._tables[split]

    def scores(self, split: str) -> list[float]:
        """The split's gold score per pair, each checked to be a number."""
        out = []
        for row, value in enumerate(self.table(split)[self.score_column], start=1):
            number = as_number(value)
            if math.isnan(number):
                raise GrainError(f"{self.where(split)}: row {row} has score {value!r} in column '{self.score_column}' "
                                 f"(task.score_column), not a number; give every pair a similarity score")
            out.append(number)
        return out

    def train_texts(self) -> list[str]:
        """The unlabelled distillation text (see the class)."""
        if self._distills_on_validation():
            table = self.table("validation")
        elif not self.from_hub and self._train_path().suffix.lower() == ".txt":
            path = self._train_path()
            check_utf8(path)
            return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            table = self.table("train", scored=False)
        texts = [str(t) for column in self.sentence_columns for t in table[column]]
        return list(dict.fromkeys(texts))  # each sentence once, in order

    def check(self, needs_train: bool = True) -> None:
        """Load and check every split this run reads: settings, files, rows, columns, scores."""
        if len(self.sentence_columns) != 2:
            raise GrainError(f"task.sentence_columns={self.sentence_columns}: give the two sentence columns of a pair, "
                             f"e.g. task.sentence_columns=[sentence1,sentence2]")
        self.check_source()
        for split in self.eval_splits:
            self.scores(split)
        if needs_train and not self.train_texts():
            raise GrainError(f"task={self.task_name}: no distillation text in {self.where('train')}; give "
                             f"task.train_file=<a file with text>")

    def load_split(self, split: str) -> datasets.Dataset:
        if split == "train":
            return datasets.Dataset.from_dict({"text": self.train_texts()})
        table = self.table(split)
        first, second = (list(map(str, table[c])) for c in self.sentence_columns)
        return datasets.Dataset.from_dict({
            "text": first + second, "kind": [FIRST] * len(first) + [SECOND] * len(second),
            "row": list(range(len(first))) * 2,
        })

    def make_evaluator(self, split: str) -> StsEvaluator:
        return StsEvaluator(self.embeddings, self.scores(split))

"""SQuAD v1.1 extractive QA: the official JSON format or the hub's `squad` (windows, metrics: the
extractive-QA task type, `grain.tasks.question_answering.task`).

Offline there is only dev-v1.1 (no train file), so `offline_split=True` (task `squad_offline`) splits
dev by article into a train part and a held-out eval part: no article is in both, so no context seen
in training is evaluated on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import datasets

from grain.errors import GrainError
from grain.tasks.cache import file_signature
from grain.tasks.question_answering.task import QuestionAnsweringTask
from grain.tasks.text_files import check_utf8


def read_squad_json(path: Path) -> datasets.Dataset:
    """Flatten the official SQuAD JSON into rows {id, title, context, question, answers}.

    `answers` is {text: [str], answer_start: [int]} (character offsets into `context`), as in the hub's
    `squad` dataset.
    """
    check_utf8(path)
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise GrainError(
            f"{path} is not a SQuAD v1.1 JSON file ({err}); expected {{'data': [{{'title', 'paragraphs': "
            f"[{{'context', 'qas'}}]}}]}} as in the official train-v1.1.json / dev-v1.1.json"
        ) from err
    rows: dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows["id"].append(qa["id"])
                rows["title"].append(article.get("title", ""))
                rows["context"].append(paragraph["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append({
                    "text": [a["text"] for a in qa["answers"]],
                    "answer_start": [int(a["answer_start"]) for a in qa["answers"]],
                })
    return datasets.Dataset.from_dict(rows)


def split_by_article(titles: list[str], eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices (train, eval) of a seeded split that keeps all rows of an article on one side.

    `titles` holds the article title of every row; `eval_fraction` of the articles (rounded, at least
    one) go to eval. Titles are sorted before the shuffle so the split does not depend on row order.
    """
    articles = sorted(set(titles))
    random.Random(seed).shuffle(articles)
    eval_articles = set(articles[: max(1, round(eval_fraction * len(articles)))])
    train, evaluation = [], []
    for index, title in enumerate(titles):
        (evaluation if title in eval_articles else train).append(index)
    return train, evaluation


class HeldOutArticles:
    """Mixin for the offline benchmarks built from SQuAD v1.1 dev (listed first among a Task's bases):
    `local_file` under the data directory, or the hub's `squad` validation split without one, split by
    article (`split_by_article`, `eval_fraction` of the articles held out, seeded) into training rows and
    held-out rows {id, title, context, question, answers}, read once (`articles`)."""

    def __init__(self, *, local_file: str = "squad/v1.1/dev.json", eval_fraction: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.local_file = local_file
        self.eval_fraction = eval_fraction
        self._articles: tuple[datasets.Dataset, datasets.Dataset] | None = None

    @classmethod
    def hub_source(cls, cfg) -> tuple[str, None]:
        return "squad", None

    @classmethod
    def local_files_hint(cls, cfg) -> str:
        return cfg.task.datamodule.get("local_file", "squad/v1.1/dev.json")

    def squad_signature(self) -> list:
        """What identifies the rows `articles` splits, for the cache."""
        if self.data_dir is None:
            return ["hub", "squad", "validation", self.eval_fraction]
        return [file_signature(self.local_path(self.local_file)), self.eval_fraction]

    def articles(self) -> tuple[datasets.Dataset, datasets.Dataset]:
        """(training rows, held-out rows) of SQuAD dev, by article, once."""
        if self._articles is None:
            if self.data_dir is None:
                full = datasets.load_dataset("squad", split="validation")
            else:
                full = read_squad_json(self.local_path(self.local_file))
            if not 0.0 < self.eval_fraction < 1.0:
                raise GrainError(f"task.datamodule.eval_fraction={self.eval_fraction}: the fraction of the articles "
                                 f"held out for evaluation, strictly between 0 and 1 (default 0.2)")
            train, held_out = split_by_article(full["title"], self.eval_fraction, self.seed)
            self._articles = (full.select(train), full.select(held_out))
        return self._articles


class SquadDataModule(QuestionAnsweringTask):
    """SQuAD v1.1's splits: the official JSON files under `data_dir`, or the hub's `squad`; with
    `offline_split`, train and eval both drawn from dev by article."""

    def __init__(
        self,
        local_file_train: str = "squad/v1.1/train.json",
        local_file_validation: str = "squad/v1.1/dev.json",
        offline_split: bool = False,
        offline_eval_fraction: float = 0.2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.local_files = {"train": local_file_train, "validation": local_file_validation}
        self.offline_split = offline_split
        self.offline_eval_fraction = offline_eval_fraction

    @classmethod
    def hub_source(cls, cfg) -> tuple[str, None]:
        return "squad", None

    @classmethod
    def local_files_hint(cls, cfg) -> str:
        module = cfg.task.datamodule
        files = [module.get("local_file_validation", "squad/v1.1/dev.json")]
        if not module.get("offline_split"):
            files.insert(0, module.get("local_file_train", "squad/v1.1/train.json"))
        return ", ".join(files)

    def cache_signature(self) -> Any:
        # max_length, seed and the source file are already in the base fingerprint
        return [self.doc_stride, self.offline_split, self.offline_eval_fraction if self.offline_split else None]

    # --- raw data -------------------------------------------------------------------------------
    def _source_split(self, split: str) -> str:
        """The split of the official data a split is drawn from: dev for both under offline_split."""
        return "validation" if self.offline_split else split

    def _local_file(self, split: str) -> Path:
        path = self.data_dir / self.local_files[self._source_split(split)]
        if path.exists():
            return path
        hint = (
            "The offline data has no SQuAD train set: use task=squad_offline to train on part of the dev "
            "articles and evaluate on the held-out ones, put train-v1.1.json there, or"
            if split == "train" else "Put the official dev-v1.1.json there, or"
        )
        raise GrainError(
            f"SQuAD '{split}' file not found at {path} (GRAIN_DATA_DIR / paths.data_dir = {self.data_dir}). "
            f"{hint} unset GRAIN_DATA_DIR to load `squad` from the hub"
        )

    def source_signature(self, split: str) -> list:
        if self.data_dir is None:
            return ["hub", "squad", self._source_split(split)]
        return file_signature(self._local_file(split))

    def load_split(self, split: str) -> datasets.Dataset:
        if self.data_dir is None:
            full = datasets.load_dataset("squad", split=self._source_split(split))
            full = full.select_columns(["id", "title", "context", "question", "answers"])
        else:
            full = read_squad_json(self._local_file(split))
        if not self.offline_split:
            return full
        # checked here, not in __init__, where Hydra would wrap the GrainError in its own exception
        if not 0.0 < self.offline_eval_fraction < 1.0:
            raise GrainError(
                f"task.datamodule.offline_eval_fraction={self.offline_eval_fraction}; expected the fraction of "
                f"the dev articles held out for evaluation, strictly between 0 and 1 (default 0.2)"
            )
        train, evaluation = split_by_article(full["title"], self.offline_eval_fraction, self.seed)
        return full.select(train if split == "train" else evaluation)

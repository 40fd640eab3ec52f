"""`task=question_answering`: extractive QA on the user's own SQuAD-format JSON files (v1.1:
`{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}`), or a
hub dataset with SQuAD's columns (id, context, question, answers). Windows, the evaluator and the
exact-match/F1 metrics are the extractive-QA task type's (`grain.tasks.question_answering.task`).

Every question needs an answer found in its context: v2.0's unanswerable questions are refused (the
metrics and windows here are v1.1's), naming the file and how many there are.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from grain.errors import GrainError
from grain.tasks.cache import file_signature
from grain.tasks.own_data import OwnDataSource, load_hub_split, require_columns, require_rows, resolve_file
from grain.tasks.question_answering.squad import read_squad_json
from grain.tasks.question_answering.task import QuestionAnsweringTask

SQUAD_COLUMNS = ("id", "context", "question", "answers")


class QuestionAnsweringDataModule(OwnDataSource, QuestionAnsweringTask):
    """`task=question_answering`: the user's SQuAD-format files or hub dataset, every answer checked."""

    def __init__(
        self,
        task_name: str = "question_answering",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.task_name = task_name
        self._tables: dict[str, datasets.Dataset] = {}

    def _local_file(self, split: str) -> Path:
        return resolve_file(self.task_name, split, self.files[split], formats=(".json",),
                            kind="a SQuAD-format .json file (v1.1: {'data': [...]})")

    def source_signature(self, split: str) -> list:
        if self.from_hub:
            return ["hub", self.dataset_name, self.dataset_config, self.hub_splits[split]]
        return file_signature(self._local_file(split))

    def table(self, split: str) -> datasets.Dataset:
        if split not in self._tables:
            where = self.where(split)
            if self.from_hub:
                table = load_hub_split(self.task_name, self.dataset_name, self.dataset_config, split,
                                       self.hub_splits[split], self.cache_dir)
                require_columns(where, table, {f"(SQuAD column {c})": c for c in SQUAD_COLUMNS})
                if "title" not in table.column_names:
                    table = table.add_column("title", [""] * len(table))
                table = table.select_columns(["id", "title", "context", "question", "answers"])
            else:
                try:
                    table = read_squad_json(self._local_file(split))
                except (KeyError, TypeError) as err:  # an article or question without a SQuAD key
                    raise GrainError(
                        f"{where}: not SQuAD v1.1 (a paragraph or question lacks {err}); each paragraph needs "
                        f"'context' and 'qas', each question 'id', 'question' and 'answers' [{{'text', 'answer_start'}}]"
                    ) from None
            require_rows(where, table)
            unanswerable = sum(1 for answers in table["answers"] if not answers["text"])
            if unanswerable:
                raise GrainError(
                    f"{where}: {unanswerable} of {len(table)} questions have no answer (SQuAD v2.0's unanswerable "
                    f"questions); grain reads v1.1: drop them (or keep only answerable ones)"
                )
            for qid, context, answers in zip(table["id"], table["context"], table["answers"]):
                for text, start in zip(answers["text"], answers["answer_start"]):
                    if context[start:start + len(text)] != text:
                        raise GrainError(
                            f"{where}: question {qid}: answer {text!r} is not at answer_start={start} of its "
                            f"context; answer_start is the character offset of the answer in the context"
                        )
            self._tables[split] = table
        return self._tables[split]

    def load_split(self, split: str) -> datasets.Dataset:
        return self.table(split)

    def check(self, needs_train: bool = True) -> None:
        if self.from_hub and any(self.files.values()):
            raise GrainError(f"task.dataset_name={self.dataset_name} and task.*_file are both set; read one of them")
        for split in (["train"] if needs_train else []) + self.eval_splits:
            self.table(split)

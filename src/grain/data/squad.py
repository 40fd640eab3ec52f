"""SQuAD v1.1 extractive QA: the official JSON format or the hub's `squad`, sliding windows.

Tokenization follows the HF question-answering examples: question first, context second, long
contexts cut into windows of `max_length` tokens overlapping by `doc_stride`. Training windows carry
start/end token positions (the [CLS] index when the answer is not inside the window); eval windows
carry the index of their example and the character offsets of their context tokens, so that
`grain.metrics.qa` can turn start/end logits back into answer text.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import torch

from grain.data.base import MODEL_INPUT_KEYS, TaskDataModule, file_signature
from grain.errors import GrainError
from grain.metrics.qa import QAEvaluator


def read_squad_json(path: Path) -> datasets.Dataset:
    """Flatten the official SQuAD JSON into rows {id, title, context, question, answers}."""
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError) as err:
        raise GrainError(f"{path} is not a SQuAD v1.1 JSON file (expected {{'data': [articles]}}): {err}") from err
    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows["id"].append(qa["id"])
                rows["title"].append(article.get("title", ""))
                rows["context"].append(paragraph["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append({
                    "text": [a["text"] for a in qa["answers"]],
                    "answer_start": [a["answer_start"] for a in qa["answers"]],
                })
    return datasets.Dataset.from_dict(rows)


def split_by_article(dataset: datasets.Dataset, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices of a (train, eval) split that keeps every article on one side (seeded)."""
    titles = sorted(set(dataset["title"]))
    random.Random(seed).shuffle(titles)
    eval_titles = set(titles[: max(1, round(eval_fraction * len(titles)))])
    train, evaluation = [], []
    for index, title in enumerate(dataset["title"]):
        (evaluation if title in eval_titles else train).append(index)
    return train, evaluation


class SquadDataModule(TaskDataModule):
    task_type = "qa"
    num_labels = None

    def __init__(
        self,
        local_files: dict[str, str] | None = None,
        doc_stride: int = 128,
        max_answer_length: int = 30,
        n_best: int = 20,
        offline_split: bool = False,
        offline_eval_fraction: float = 0.2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if doc_stride >= self.max_length // 2:
            raise GrainError(
                f"task.datamodule.doc_stride={doc_stride} leaves no room for the question in windows of "
                f"max_length={self.max_length}; use a stride below max_length / 2 (128 for 384)"
            )
        self.local_files = dict(local_files or {"train": "squad/v1.1/train.json", "validation": "squad/v1.1/dev.json"})
        self.doc_stride = doc_stride
        self.max_answer_length = max_answer_length
        self.n_best = n_best
        self.offline_split = offline_split
        self.offline_eval_fraction = offline_eval_fraction

    def cache_signature(self):
        return [self.doc_stride, self.offline_split, self.offline_eval_fraction]

    # --- raw data -------------------------------------------------------------------------------
    def _file(self, split: str) -> Path:
        name = "validation" if self.offline_split else split
        path = self.data_dir / self.local_files[name]
        if not path.exists():
            hint = " Offline, use task=squad_offline (trains on part of dev, evaluates on held-out articles)" if split == "train" else ""
            raise GrainError(
                f"SQuAD '{split}' file not found at {path} (GRAIN_DATA_DIR={self.data_dir}).{hint} "
                f"or unset GRAIN_DATA_DIR to load `squad` from the hub"
            )
        return path

    def source_signature(self, split: str) -> list:
        if self.data_dir is None:
            return ["hub", "squad", split, self.offline_split]
        return file_signature(self._file(split))

    def load_split(self, split: str) -> datasets.Dataset:
        if self.data_dir is None:
            full = datasets.load_dataset("squad", split="validation" if self.offline_split else split)
            full = full.select_columns(["id", "title", "context", "question", "answers"])
        else:
            full = read_squad_json(self._file(split))
        if not self.offline_split:
            return full
        train, evaluation = split_by_article(full, self.offline_eval_fraction, self.seed)
        return full.select(train if split == "train" else evaluation)

    # --- features -------------------------------------------------------------------------------
    def _windows(self, batch):
        pad_right = self.tokenizer.padding_side == "right"
        return self.tokenizer(
            [q.lstrip() for q in batch["question"]],
            batch["context"],
            truncation="only_second" if pad_right else "only_first",
            max_length=self.max_length,
            stride=self.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )

    def _train_features(self, batch):
        encoded = self._windows(batch)
        starts, ends = [], []
        for i, offsets in enumerate(encoded["offset_mapping"]):
            example = encoded["overflow_to_sample_mapping"][i]
            answers = batch["answers"][example]
            sequence_ids = encoded.sequence_ids(i)
            context = [j for j, s in enumerate(sequence_ids) if s == 1]
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            if offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
                starts.append(0)  # answer not inside this window: point at [CLS]
                ends.append(0)
                continue
            start = next(j for j in context if offsets[j][1] > start_char)
            end = next(j for j in reversed(context) if offsets[j][0] < end_char)
            starts.append(start)
            ends.append(end)
        encoded["start_positions"] = starts
        encoded["end_positions"] = ends
        encoded.pop("offset_mapping")
        encoded.pop("overflow_to_sample_mapping")
        return encoded

    def _eval_features(self, batch, indices):
        encoded = self._windows(batch)
        encoded["example_index"] = [indices[m] for m in encoded.pop("overflow_to_sample_mapping")]
        encoded["offset_mapping"] = [
            [o if s == 1 else None for o, s in zip(offsets, encoded.sequence_ids(i))]
            for i, offsets in enumerate(encoded["offset_mapping"])
        ]
        return encoded

    def tokenize_split(self, split: str, raw: datasets.Dataset) -> datasets.Dataset:
        if split == "train":
            return raw.map(self._train_features, batched=True, remove_columns=raw.column_names, desc="tokenize train")
        return raw.map(
            self._eval_features, batched=True, with_indices=True, remove_columns=raw.column_names, desc=f"tokenize {split}"
        )

    def collate(self, features: list[dict]) -> dict:
        keys = MODEL_INPUT_KEYS + ("start_positions", "end_positions")
        batch = self.collator([{k: f[k] for k in keys if k in f} for f in features])
        if "example_index" in features[0]:
            batch["example_index"] = torch.tensor([f["example_index"] for f in features])
            batch["offset_mapping"] = [f["offset_mapping"] for f in features]
        return batch

    def make_evaluator(self, split: str) -> QAEvaluator:
        return QAEvaluator(self.raw_split(split), self.n_best, self.max_answer_length)

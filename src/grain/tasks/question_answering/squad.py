"""SQuAD v1.1 extractive QA: the official JSON format or the hub's `squad`, cut into sliding windows.

Tokenization follows the HF question-answering examples: question first, context second, long
contexts cut into windows of `max_length` tokens that overlap by `doc_stride` tokens. Training windows
carry start/end token positions (the [CLS] index 0 when the answer is not inside the window). Eval
windows carry the position of their example in the raw split and the character span of each context
token, so that `grain.metrics.qa` can turn start/end logits back into answer text.

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

from grain.data.base import MODEL_INPUT_KEYS, TaskDataModule, file_signature
from grain.errors import GrainError
from grain.metrics.qa import QAEvaluator

TRAIN_LABEL_KEYS = ("start_positions", "end_positions")
EVAL_KEYS = ("example_index", "offset_mapping")


def read_squad_json(path: Path) -> datasets.Dataset:
    """Flatten the official SQuAD JSON into rows {id, title, context, question, answers}.

    `answers` is {text: [str], answer_start: [int]} (character offsets into `context`), as in the hub's
    `squad` dataset.
    """
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


def answer_token_span(offsets: list, sequence_ids: list, answers: dict) -> tuple[int, int]:
    """(start, end) token indices of the first answer in one window, or (0, 0) ([CLS]) when the
    answer is not entirely inside the window's context.

    offsets: per token, its (start, end) character span; sequence_ids: per token, 0 (question),
    1 (context) or None (special token).
    """
    if not answers["answer_start"]:
        return 0, 0
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    context = [j for j, sequence in enumerate(sequence_ids) if sequence == 1]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = next(j for j in context if offsets[j][1] > start_char)
    end = next(j for j in reversed(context) if offsets[j][0] < end_char)
    return start, end


class SquadDataModule(TaskDataModule):
    task_type = "qa"
    num_labels = None

    def __init__(
        self,
        local_file_train: str = "squad/v1.1/train.json",
        local_file_validation: str = "squad/v1.1/dev.json",
        doc_stride: int = 128,
        max_answer_length: int = 30,
        n_best: int = 20,
        offline_split: bool = False,
        offline_eval_fraction: float = 0.2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.local_files = {"train": local_file_train, "validation": local_file_validation}
        self.doc_stride = doc_stride
        self.max_answer_length = max_answer_length
        self.n_best = n_best
        self.offline_split = offline_split
        self.offline_eval_fraction = offline_eval_fraction

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

    # --- features -------------------------------------------------------------------------------
    def _check_question_lengths(self, ids: list[str], questions: list[str]) -> None:
        """Fail clearly where a question leaves no more than `doc_stride` context tokens per window
        (the tokenizer would otherwise abort with a Rust panic)."""
        lengths = [len(q) for q in self.tokenizer(questions, add_special_tokens=False)["input_ids"]]
        room = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=True)
        for qid, length in zip(ids, lengths):
            if room - length <= self.doc_stride:
                raise GrainError(
                    f"SQuAD question {qid} has {length} tokens, which leaves {room - length} context tokens per "
                    f"window of max_length={self.max_length}, not more than doc_stride={self.doc_stride}; raise "
                    f"task.datamodule.max_length or lower task.datamodule.doc_stride"
                )

    def _windows(self, batch: dict) -> Any:
        # some questions start with spaces, which only waste window room
        questions = [q.lstrip() for q in batch["question"]]
        self._check_question_lengths(batch["id"], questions)
        return self.tokenizer(
            questions,
            batch["context"],
            truncation="only_second",
            max_length=self.max_length,
            stride=self.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )

    def _train_features(self, batch: dict) -> Any:
        encoded = self._windows(batch)
        spans = [
            answer_token_span(offsets, encoded.sequence_ids(i), batch["answers"][example])
            for i, (offsets, example) in enumerate(zip(encoded["offset_mapping"], encoded["overflow_to_sample_mapping"]))
        ]
        encoded["start_positions"] = [start for start, _ in spans]
        encoded["end_positions"] = [end for _, end in spans]
        encoded.pop("offset_mapping")
        encoded.pop("overflow_to_sample_mapping")
        return encoded

    def _eval_features(self, batch: dict, indices: list[int]) -> Any:
        encoded = self._windows(batch)
        # position of the window's example in the raw split, which the evaluator indexes
        encoded["example_index"] = [indices[m] for m in encoded.pop("overflow_to_sample_mapping")]
        # None outside the context, so post-processing never proposes question or special tokens
        encoded["offset_mapping"] = [
            [list(span) if sequence == 1 else None for span, sequence in zip(offsets, encoded.sequence_ids(i))]
            for i, offsets in enumerate(encoded["offset_mapping"])
        ]
        return encoded

    def tokenize_split(self, split: str, raw: datasets.Dataset) -> datasets.Dataset:
        if split == "train":
            return raw.map(self._train_features, batched=True, remove_columns=raw.column_names, desc="tokenize train")
        return raw.map(
            self._eval_features, batched=True, with_indices=True, remove_columns=raw.column_names,
            desc=f"tokenize {split}",
        )

    def collate(self, features: list[dict]) -> dict[str, Any]:
        """Pad the model features (and start/end positions) to tensors [batch, seq] / [batch]; eval
        bookkeeping (`example_index`: [batch] ints, `offset_mapping`: per window a list of [start, end]
        or None) passes through as python lists, in batch order."""
        keys = MODEL_INPUT_KEYS + TRAIN_LABEL_KEYS
        batch = dict(self.collator([{k: f[k] for k in keys if k in f} for f in features]))
        for key in EVAL_KEYS:
            if key in features[0]:
                batch[key] = [f[key] for f in features]
        return batch

    def make_evaluator(self, split: str) -> QAEvaluator:
        return QAEvaluator(self.raw_split(split), n_best=self.n_best, max_answer_length=self.max_answer_length)

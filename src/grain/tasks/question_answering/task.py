"""The extractive-QA task type: rows {id, title, context, question, answers}, cut into sliding windows;
a question-answering head; exact match and F1 of the answer text.

Tokenization follows the HF question-answering examples: question first, context second, long
contexts cut into windows of `max_length` tokens that overlap by `doc_stride` tokens. Training windows
carry start/end token positions (the [CLS] index 0 when the answer is not inside the window). Eval
windows carry the position of their example in the raw split and the character span of each context
token, so that `grain.tasks.question_answering.metrics` can turn start/end logits back into answer text.
"""

from __future__ import annotations

from typing import Any

import datasets
import torch
from omegaconf import DictConfig
from transformers import AutoModelForQuestionAnswering

from grain.checks import check_count
from grain.errors import GrainError
from grain.tasks.base import MODEL_INPUT_KEYS, Task
from grain.tasks.question_answering.metrics import QAEvaluator

TRAIN_LABEL_KEYS = ("start_positions", "end_positions")
EVAL_KEYS = ("example_index", "offset_mapping")


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


class QuestionAnsweringTask(Task):
    """Extractive QA. Its data modules' rows are {id: str, title: str, context: str, question: str,
    answers: {text: [str], answer_start: [int]}} (SQuAD v1.1's, answer_start a character offset into
    the context). Distillation compares the start and the end logits ([batch, seq] each) of every
    window and position, as airaria/GRAIN.

    doc_stride: tokens shared by consecutive windows of a context; max_answer_length: the longest
    answer predicted, in tokens; n_best: start and end candidates per window paired into spans.
    """

    auto_model_class = AutoModelForQuestionAnswering

    def __init__(self, doc_stride: int = 128, max_answer_length: int = 30, n_best: int = 20, **kwargs):
        super().__init__(**kwargs)
        self.doc_stride = doc_stride
        self.max_answer_length = max_answer_length
        self.n_best = n_best

    def cache_signature(self) -> Any:
        # max_length, seed and the source file are already in the base fingerprint
        return [self.doc_stride]

    @classmethod
    def prediction_logits(cls, outputs) -> list[torch.Tensor]:
        """[start_logits, end_logits], each [batch, seq]."""
        return [outputs.start_logits, outputs.end_logits]

    @classmethod
    def validate_settings(cls, cfg: DictConfig) -> None:
        """task.datamodule.doc_stride (below max_length), max_answer_length and n_best: positive integers."""
        check_count(cfg, "task.datamodule.doc_stride", "task.datamodule.doc_stride=128")
        if cfg.task.datamodule.doc_stride >= cfg.task.datamodule.max_length:
            raise GrainError(
                f"task.datamodule.doc_stride={cfg.task.datamodule.doc_stride} is not below "
                f"task.datamodule.max_length={cfg.task.datamodule.max_length}; windows overlap by doc_stride "
                f"tokens, e.g. max_length=384 doc_stride=128"
            )
        check_count(cfg, "task.datamodule.max_answer_length", "task.datamodule.max_answer_length=30")
        check_count(cfg, "task.datamodule.n_best", "task.datamodule.n_best=20")

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

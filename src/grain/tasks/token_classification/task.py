"""The token-classification task type: rows {tokens, ner_tags}, a token-classification head, seqeval
entity F1 (strict IOB2).

Words are tokenized with `is_split_into_words`; each word's tag goes to its first sub-token and the
other sub-tokens (and special tokens) get -100, so the loss, distillation and metrics see exactly one
position per word. Words past `max_length` tokens are truncated away (and so are not scored).
"""

from __future__ import annotations

from typing import Any

import datasets
import torch
from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

from grain.tasks.base import Task
from grain.tasks.token_classification.metrics import IGNORE_INDEX, NEREvaluator


def first_subtoken_labels(word_ids: list[int | None], tags: list[int]) -> list[int]:
    """Per token: the word's tag on its first sub-token, -100 on later sub-tokens and special tokens.

    word_ids: per token the index of its word in the sentence, None for special tokens (as given by
    a fast tokenizer's `word_ids()`); tags: per word its label id.
    """
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous else tags[word])
        previous = word
    return labels


class TokenClassificationTask(Task):
    """Tagging of words. Its data modules' rows are {tokens: [word], ner_tags: [tag id]} and they set
    `labels` (the tag names, by id); the features carry `labels` [seq] per token, -100 except on each
    word's first sub-token. Distillation compares the [batch, seq, num_labels] logits at those
    labelled positions only."""

    auto_model_class = AutoModelForTokenClassification

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # pads `labels` with -100 next to the model inputs, which DataCollatorWithPadding cannot
        self.token_collator = DataCollatorForTokenClassification(self.tokenizer, label_pad_token_id=IGNORE_INDEX)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @classmethod
    def distillation_positions(cls, batch: dict[str, Any]) -> torch.Tensor:
        """Bool [batch, seq]: the labelled positions (each word's first sub-token, not padding)."""
        return batch["labels"] != IGNORE_INDEX

    def tokenize_split(self, split: str, raw: datasets.Dataset) -> datasets.Dataset:
        def tokenize(batch: dict) -> Any:
            encoded = self.tokenizer(
                batch["tokens"], is_split_into_words=True, truncation=True, max_length=self.max_length
            )
            encoded["labels"] = [
                first_subtoken_labels(encoded.word_ids(i), tags) for i, tags in enumerate(batch["ner_tags"])
            ]
            return encoded

        return raw.map(tokenize, batched=True, remove_columns=raw.column_names, desc=f"tokenize {split}")

    def collate(self, features: list[dict]) -> dict[str, Any]:
        """Pad input features and `labels` to [batch, seq] tensors (labels padded with -100)."""
        return dict(self.token_collator(features))

    def make_evaluator(self, split: str) -> NEREvaluator:
        return NEREvaluator(self.labels)

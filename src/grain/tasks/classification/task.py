"""The classification task type: rows {text_a, text_b, label}, a sequence-classification head, accuracy (and F1)."""

from __future__ import annotations

import datasets
from transformers import AutoModelForSequenceClassification

from grain.tasks.base import Task
from grain.tasks.classification.metrics import ClassificationEvaluator


class ClassificationTask(Task):
    """Sentence or sentence-pair classification. Its data modules' rows are {text_a: str, text_b: str
    or None, label: label id}; the features are the tokenized text (a pair when `sentence_pairs`) and
    `labels`. Distillation compares the [batch, num_labels] logits of every row."""

    auto_model_class = AutoModelForSequenceClassification

    @property
    def sentence_pairs(self) -> bool:
        """Whether rows are sentence pairs (text_b is tokenized as the second segment)."""
        raise NotImplementedError

    def tokenize_split(self, split: str, raw: datasets.Dataset) -> datasets.Dataset:
        pair = self.sentence_pairs

        def tokenize(batch):
            encoded = self.tokenizer(batch["text_a"], batch["text_b"] if pair else None, truncation=True,
                                     max_length=self.max_length)
            encoded["labels"] = batch["label"]
            return encoded

        return raw.map(tokenize, batched=True, remove_columns=raw.column_names, desc=f"tokenize {split}")

    def make_evaluator(self, split: str) -> ClassificationEvaluator:
        return ClassificationEvaluator(self.num_labels)

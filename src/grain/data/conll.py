"""CoNLL-2003 NER: the CoNLL column format (`word POS chunk NER`, IOB2) or the hub's `conll2003`.

Words are tokenized with `is_split_into_words`; each word's label goes to its first sub-token and
the other sub-tokens (and special tokens) get -100, so loss, KD and metrics see one position per word.
"""

from __future__ import annotations

from pathlib import Path

import datasets
from transformers import DataCollatorForTokenClassification

from grain.data.base import TaskDataModule, file_signature
from grain.errors import GrainError
from grain.metrics.ner import NEREvaluator

CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def read_conll(path: Path, labels: list[str]) -> datasets.Dataset:
    """Sentences of a CoNLL column file as rows {tokens, ner_tags}; -DOCSTART- lines are skipped."""
    label_ids = {name: i for i, name in enumerate(labels)}
    rows = {"tokens": [], "ner_tags": []}
    words, tags = [], []

    def flush():
        if words:
            rows["tokens"].append(list(words))
            rows["ner_tags"].append(list(tags))
            words.clear()
            tags.clear()

    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                flush()
                continue
            if parts[0] == "-DOCSTART-":
                flush()
                continue
            tag = parts[-1]
            if tag not in label_ids:
                raise GrainError(
                    f"{path}, line {line_no}: unknown NER tag '{tag}'; expected IOB2 tags {labels}. "
                    f"Convert IOB1 files to IOB2 or check that this is CoNLL-2003"
                )
            words.append(parts[0])
            tags.append(label_ids[tag])
    flush()
    return datasets.Dataset.from_dict(rows)


class ConllDataModule(TaskDataModule):
    task_type = "ner"

    def __init__(self, local_files: dict[str, str] | None = None, labels: list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.local_files = dict(local_files or {"train": "conll2003/train.txt", "validation": "conll2003/valid.txt"})
        self.labels = list(labels or CONLL_LABELS)
        self.token_collator = DataCollatorForTokenClassification(self.tokenizer)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def source_signature(self, split: str) -> list:
        if self.data_dir is None:
            return ["hub", "conll2003", split]
        return file_signature(self.local_path(self.local_files[split]))

    def load_split(self, split: str) -> datasets.Dataset:
        if self.data_dir is None:
            return datasets.load_dataset("conll2003", split=split).select_columns(["tokens", "ner_tags"])
        return read_conll(self.local_path(self.local_files[split]), self.labels)

    def tokenize_split(self, split: str, raw: datasets.Dataset) -> datasets.Dataset:
        def tokenize(batch):
            encoded = self.tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=self.max_length)
            encoded["labels"] = [
                first_subtoken_labels(encoded.word_ids(i), tags) for i, tags in enumerate(batch["ner_tags"])
            ]
            return encoded

        return raw.map(tokenize, batched=True, remove_columns=raw.column_names, desc=f"tokenize {split}")

    def collate(self, features: list[dict]) -> dict:
        return self.token_collator(features)

    def make_evaluator(self, split: str) -> NEREvaluator:
        return NEREvaluator(self.labels)


def first_subtoken_labels(word_ids: list[int | None], tags: list[int]) -> list[int]:
    """Per token: the word's tag on its first sub-token, -100 on later sub-tokens and special tokens."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(-100 if word is None or word == previous else tags[word])
        previous = word
    return labels

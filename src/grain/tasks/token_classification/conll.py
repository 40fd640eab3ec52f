"""CoNLL-2003 NER: the CoNLL column format (`word POS chunk NER`, IOB2) or the hub's `conll2003`.

Words are tokenized with `is_split_into_words`; each word's tag goes to its first sub-token and the
other sub-tokens (and special tokens) get -100, so the loss, distillation and metrics see exactly one
position per word. Words past `max_length` tokens are truncated away (and so are not scored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
from transformers import DataCollatorForTokenClassification

from grain.data.base import TaskDataModule, file_signature
from grain.errors import GrainError
from grain.metrics.ner import NEREvaluator

# The order of the hub's conll2003 `ner_tags` ints, so local files and the hub give the same ids.
CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
IGNORE_INDEX = -100  # positions the loss and metrics skip (PyTorch cross-entropy's default)


def read_conll(path: Path, labels: list[str] = CONLL_LABELS) -> datasets.Dataset:
    """Sentences of a CoNLL column file as rows {tokens: [word], ner_tags: [label id]}.

    The word is the first column and the NER tag the last; blank lines end sentences and
    `-DOCSTART-` lines (document breaks) are skipped.
    """
    label_ids = {name: i for i, name in enumerate(labels)}
    rows: dict[str, list] = {"tokens": [], "ner_tags": []}
    words: list[str] = []
    tags: list[int] = []

    def end_sentence() -> None:
        if words:
            rows["tokens"].append(list(words))
            rows["ner_tags"].append(list(tags))
            words.clear()
            tags.clear()

    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            columns = line.split()
            if not columns or columns[0] == "-DOCSTART-":
                end_sentence()
                continue
            tag = columns[-1]
            if len(columns) < 2 or tag not in label_ids:
                raise GrainError(
                    f"{path}, line {line_no}: unknown NER tag '{tag}' in {line.strip()!r}; expected lines "
                    f"`word POS chunk NER` with an IOB2 tag from {labels}. Convert IOB1 files to IOB2, or "
                    f"check that this is a CoNLL-2003 file"
                )
            words.append(columns[0])
            tags.append(label_ids[tag])
    end_sentence()
    return datasets.Dataset.from_dict(rows)


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


class ConllDataModule(TaskDataModule):
    task_type = "ner"
    labels = CONLL_LABELS

    def __init__(
        self,
        local_file_train: str = "conll2003/train.txt",
        local_file_validation: str = "conll2003/valid.txt",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.local_files = {"train": local_file_train, "validation": local_file_validation}
        # pads `labels` with -100 next to the model inputs, which DataCollatorWithPadding cannot
        self.token_collator = DataCollatorForTokenClassification(self.tokenizer, label_pad_token_id=IGNORE_INDEX)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def source_signature(self, split: str) -> list:
        if self.data_dir is None:
            return ["hub", "conll2003", split]
        return file_signature(self.local_path(self.local_files[split]))

    def load_split(self, split: str) -> datasets.Dataset:
        if self.data_dir is None:
            # the hub's ner_tags are ints in CONLL_LABELS order
            return datasets.load_dataset("conll2003", split=split).select_columns(["tokens", "ner_tags"])
        return read_conll(self.local_path(self.local_files[split]), self.labels)

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

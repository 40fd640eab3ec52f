"""`task=token_classification`: tagging (NER-style, IOB2 tags) on the user's own data, as CoNLL does it.

Files: CoNLL column files (`.txt`, `.conll`, `.iob`, `.bio`: the word first, the tag last, blank lines
between sentences, `-DOCSTART-` lines skipped), or json/jsonl/parquet rows with a list of tokens and a
list of tags (`task.tokens_column`, `task.tags_column`), or a hub dataset (`task.dataset_name`).
Tokenization, the first-sub-token labels, the collator and the seqeval entity F1 (strict IOB2) are
the token-classification task type's (`grain.tasks.token_classification.task`), as CoNLL-2003's.
Tags: those of the training split, `O` first, then per entity type
`B-X`, `I-X` (both, whichever the file has), unless `task.labels` lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from grain.errors import GrainError
from grain.tasks.cache import file_signature
from grain.tasks.own_data import (
    FORMATS,
    OwnDataSource,
    load_file,
    load_hub_split,
    require_columns,
    require_rows,
    resolve_file,
)
from grain.tasks.text_files import check_utf8
from grain.tasks.token_classification.task import TokenClassificationTask

COLUMN_FORMATS = (".txt", ".conll", ".iob", ".iob2", ".bio")
# CoNLL column files, or rows with a token list and a tag list
TAGGED_FORMATS = COLUMN_FORMATS + tuple(e for e in FORMATS if e != ".tsv")
TAGGED_KIND = "a CoNLL column file (.txt, .conll, .iob, .bio) or rows of tokens and tags (.json, .jsonl, .parquet, .csv)"


def read_column_file(path: Path) -> datasets.Dataset:
    """A CoNLL column file as rows {tokens: [word], tags: [tag name]} (tags checked later)."""
    rows: dict[str, list] = {"tokens": [], "tags": []}
    words: list[str] = []
    tags: list[str] = []
    check_utf8(path)
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            columns = line.split()
            if not columns or columns[0] == "-DOCSTART-":
                if words:
                    rows["tokens"].append(list(words))
                    rows["tags"].append(list(tags))
                    words.clear()
                    tags.clear()
                continue
            if len(columns) < 2:
                raise GrainError(
                    f"{path}, line {line_no}: {line.strip()!r} has no tag; expected `word ... tag` per line (the "
                    f"word first, the tag last) and a blank line between sentences"
                )
            words.append(columns[0])
            tags.append(columns[-1])
    if words:
        rows["tokens"].append(list(words))
        rows["tags"].append(list(tags))
    return datasets.Dataset.from_dict(rows)


def iob2_order(tags: set[str]) -> list[str]:
    """O first, then for each entity type (sorted) B-X and I-X."""
    types = sorted({tag[2:] for tag in tags if tag != "O"})
    return ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


class TokenClassificationDataModule(OwnDataSource, TokenClassificationTask):
    """`task=token_classification`: the user's tagged files or hub dataset, tags mapped to ids."""

    def __init__(
        self,
        task_name: str = "token_classification",
        tokens_column: str = "tokens",
        tags_column: str = "ner_tags",
        labels: list | None = None,
        json_field: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.task_name = task_name
        self.tokens_column = tokens_column
        self.tags_column = tags_column
        self.given_labels = None if labels is None else [str(label).strip() for label in labels]
        self.json_field = json_field
        self._tables: dict[str, datasets.Dataset] = {}
        self._labels: list[str] | None = None

    # --- where the data is ------------------------------------------------------------------------
    def _path(self, split: str) -> Path:
        return resolve_file(self.task_name, split, self.files[split], formats=TAGGED_FORMATS, kind=TAGGED_KIND)

    def source_signature(self, split: str) -> list:
        if self.from_hub:
            return ["hub", self.dataset_name, self.dataset_config, self.hub_splits[split]]
        return file_signature(self._path(split))

    def cache_signature(self) -> Any:
        return [self.tokens_column, self.tags_column, self.labels, self.json_field]

    def table(self, split: str) -> datasets.Dataset:
        """The split's sentences {tokens: [str], tags: [str]}, checked for rows, columns and IOB2 tags."""
        if split in self._tables:
            return self._tables[split]
        where = self.where(split)
        column_file = False
        if self.from_hub:
            table = load_hub_split(self.task_name, self.dataset_name, self.dataset_config, split,
                                   self.hub_splits[split], self.cache_dir)
        else:
            path = self._path(split)
            column_file = path.suffix.lower() in COLUMN_FORMATS
            table = read_column_file(path) if column_file else load_file(path, self.cache_dir, self.json_field)
        require_rows(where, table)
        if not column_file:
            require_columns(where, table, {"task.tokens_column": self.tokens_column, "task.tags_column": self.tags_column})
            feature = table.features[self.tags_column]
            inner = getattr(feature, "feature", None)
            names = list(inner.names) if isinstance(inner, datasets.ClassLabel) else self.given_labels
            tags = []
            for row, sequence in enumerate(table[self.tags_column], start=1):
                if names is not None and any(isinstance(t, int) for t in sequence):
                    if any(not 0 <= t < len(names) for t in sequence):
                        raise GrainError(f"{where}: sentence {row} has a tag id outside the {len(names)} tags {names}")
                    tags.append([names[t] for t in sequence])
                else:
                    tags.append([str(t).strip() for t in sequence])
            tokens = [[str(token) for token in sequence] for sequence in table[self.tokens_column]]
            table = datasets.Dataset.from_dict({"tokens": tokens, "tags": tags})
        for row, (tokens, tags) in enumerate(zip(table["tokens"], table["tags"]), start=1):
            if len(tokens) != len(tags):
                raise GrainError(f"{where}: row {row} has {len(tokens)} tokens and {len(tags)} tags; give one tag per token")
            bad = next((t for t in tags if not (t == "O" or (t[:2] in ("B-", "I-") and len(t) > 2))), None)
            if bad is not None:
                hint = (" (tags are numbers: list their names in id order with task.labels=[O,B-PER,I-PER,...])"
                        if bad.lstrip("-").isdigit() else "")
                raise GrainError(
                    f"{where}: sentence {row} has the tag '{bad}', not IOB2 (O, B-<type>, I-<type>){hint}; grain "
                    f"scores entities with seqeval's strict IOB2: convert the tags (IOB1/BIOES to IOB2)"
                )
        self._tables[split] = table
        return table

    # --- labels -------------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        if self._labels is None:
            if self.given_labels is not None:
                self._labels = list(self.given_labels)
            else:
                self._labels = iob2_order({tag for tags in self.table("train")["tags"] for tag in tags})
        return self._labels

    def tag_ids(self, split: str) -> list[list[int]]:
        ids = {name: i for i, name in enumerate(self.labels)}
        out = []
        for row, tags in enumerate(self.table(split)["tags"], start=1):
            unknown = next((t for t in tags if t not in ids), None)
            if unknown is not None:
                origin = "task.labels" if self.given_labels is not None else f"the training split ({self.where('train')})"
                raise GrainError(
                    f"{self.where(split)}: sentence {row} has the tag '{unknown}', which {origin} lacks; add it to "
                    f"task.labels=[...] (the tags now: {self.labels}) or fix that sentence"
                )
            out.append([ids[t] for t in tags])
        return out

    # --- checks before training --------------------------------------------------------------------
    def check(self, needs_train: bool = True) -> None:
        if self.from_hub and any(self.files.values()):
            raise GrainError(f"task.dataset_name={self.dataset_name} and task.*_file are both set; read one of them")
        given = self.given_labels
        if given is not None and (len(set(given)) != len(given) or "O" not in given):
            raise GrainError(f"task.labels={self.given_labels}: list each tag once, O included")
        if needs_train or self.given_labels is None:
            self.tag_ids("train")
        for split in self.eval_splits:
            self.tag_ids(split)

    def load_split(self, split: str) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"tokens": self.table(split)["tokens"], "ner_tags": self.tag_ids(split)})

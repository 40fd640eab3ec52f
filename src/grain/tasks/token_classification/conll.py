"""CoNLL-2003 NER: the CoNLL column format (`word POS chunk NER`, IOB2) or the hub's `conll2003`
(features, metrics: the token-classification task type, `grain.tasks.token_classification.task`)."""

from __future__ import annotations

from pathlib import Path

import datasets

from grain.errors import GrainError
from grain.tasks.cache import file_signature
from grain.tasks.text_files import check_utf8
from grain.tasks.token_classification.task import TokenClassificationTask

# The order of the hub's conll2003 `ner_tags` ints, so local files and the hub give the same ids.
CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


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

    check_utf8(path)
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


class ConllDataModule(TokenClassificationTask):
    """CoNLL-2003's splits: the column files under `data_dir`, or the hub's `conll2003`; its nine tags."""

    labels = CONLL_LABELS

    def __init__(
        self,
        local_file_train: str = "conll2003/train.txt",
        local_file_validation: str = "conll2003/valid.txt",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.local_files = {"train": local_file_train, "validation": local_file_validation}

    @classmethod
    def label_names(cls, cfg) -> list[str]:
        return list(CONLL_LABELS)

    @classmethod
    def hub_source(cls, cfg) -> tuple[str, None]:
        return "conll2003", None

    @classmethod
    def local_files_hint(cls, cfg) -> str:
        module = cfg.task.datamodule
        return ", ".join([module.get("local_file_train", "conll2003/train.txt"),
                          module.get("local_file_validation", "conll2003/valid.txt")])

    def source_signature(self, split: str) -> list:
        if self.data_dir is None:
            return ["hub", "conll2003", split]
        return file_signature(self.local_path(self.local_files[split]))

    def load_split(self, split: str) -> datasets.Dataset:
        if self.data_dir is None:
            # the hub's ner_tags are ints in CONLL_LABELS order
            return datasets.load_dataset("conll2003", split=split).select_columns(["tokens", "ner_tags"])
        return read_conll(self.local_path(self.local_files[split]), self.labels)

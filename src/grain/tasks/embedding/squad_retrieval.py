"""`task=squad_retrieval`: an offline retrieval benchmark from SQuAD v1.1 dev, split by article as
`task=squad_offline` splits it (no article on both sides).

Evaluation: every held-out question against every held-out paragraph, the paragraph it was asked on
relevant. Distillation text (unlabelled): the sentences of the training articles' paragraphs and their
questions, with `paragraphs=True` the whole paragraphs too (the length of text the evaluation embeds:
148 tokens at the median, against 30 for a sentence), with `sentence_windows=[k, ...]` every run of k
consecutive sentences of a paragraph (text of a paragraph's kind and length, several per paragraph), plus
the sentences of `extra_text` files (SST-2's and CoNLL-2003's training sentences in the offline data) where
they are present.
"""

from __future__ import annotations

import re
from pathlib import Path

from grain.errors import GrainError
from grain.tasks.cache import file_signature
from grain.tasks.classification.glue import read_tsv
from grain.tasks.embedding.retrieval import RetrievalData, RetrievalTask
from grain.tasks.question_answering.squad import HeldOutArticles
from grain.tasks.token_classification.conll import read_conll

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def sentences(paragraph: str) -> list[str]:
    """A paragraph cut after '.', '!' or '?' followed by space and a capital, digit or quote."""
    return [s.strip() for s in SENTENCE_END.split(paragraph) if s.strip()]


def sentence_windows(paragraph: str, sizes: list[int]) -> list[str]:
    """Every run of k consecutive sentences of `paragraph` (`sentences`), joined by a space, for each k in
    `sizes`, shorter runs first; runs as long as the whole paragraph are left out (`paragraphs` adds those)."""
    cut = sentences(paragraph)
    return [" ".join(cut[i:i + k]) for k in sizes if k < len(cut) for i in range(len(cut) - k + 1)]


# readers of the extra distillation text, by the kind of file each entry of `extra_text` names
EXTRA_READERS = {
    "sst2": lambda path: read_tsv(path, ["sentence", None, "label"], ["0", "1"])["text_a"],
    "conll2003": lambda path: [" ".join(tokens) for tokens in read_conll(path)["tokens"]],
}


def check_text_options(extra_text: dict[str, str], windows: list[int]) -> None:
    """Raises GrainError, naming the value and the fix, for an `extra_text` reader EXTRA_READERS lacks or a
    `sentence_windows` run length that is not a whole number of at least 2."""
    unknown = sorted(set(extra_text) - set(EXTRA_READERS))
    if unknown:
        raise GrainError(f"task.datamodule.extra_text: no reader for {unknown}; readers: {sorted(EXTRA_READERS)}")
    if any(not isinstance(k, int) or k < 2 for k in windows):
        raise GrainError(f"task.datamodule.sentence_windows={windows}: run lengths of consecutive sentences, each at "
                         f"least 2 (one sentence is already in the text); e.g. [2,3]")


class SquadRetrievalDataModule(HeldOutArticles, RetrievalTask):
    """SQuAD dev split by article (`HeldOutArticles`: `local_file` under the data directory, or the hub's
    `squad` validation split) as retrieval; `extra_text`: {reader: file under the data directory}
    (readers: EXTRA_READERS), skipped where the file is absent or without a data directory;
    `paragraphs`: the training articles' whole paragraphs join their sentences in the distillation text;
    `sentence_windows`: run lengths k (each at least 2) whose runs of consecutive sentences join them
    (`sentence_windows`: windows of 2 and 3 sentences added nothing at 250 steps, docs/results/
    embedding_squad_retrieval). Raises GrainError for an unknown reader or a run length below 2."""

    def __init__(self, extra_text: dict[str, str] | None = None, paragraphs: bool = False,
                 sentence_windows: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.extra_text = dict(extra_text or {})
        self.paragraphs = bool(paragraphs)
        check_text_options(self.extra_text, list(sentence_windows or []))
        self.sentence_windows = sorted(set(sentence_windows or []))

    @classmethod
    def validate_settings(cls, cfg) -> None:
        super().validate_settings(cfg)
        check_text_options(dict(cfg.task.datamodule.get("extra_text") or {}),
                           list(cfg.task.datamodule.get("sentence_windows") or []))

    def _extra_files(self) -> dict[str, Path]:
        if self.data_dir is None:
            return {}
        return {kind: self.data_dir / rel for kind, rel in self.extra_text.items() if (self.data_dir / rel).is_file()}

    def source_signature(self, split: str) -> list:
        if split != "train":
            return self.squad_signature()
        return [*self.squad_signature(), *(file_signature(p) for p in self._extra_files().values()), self.paragraphs,
                *([self.sentence_windows] if self.sentence_windows else [])]

    def retrieval_data(self, split: str) -> RetrievalData:
        held_out = self.articles()[1]
        doc_ids: dict[str, str] = {}  # paragraph text -> its id, in order of appearance
        qrels: dict[str, dict[str, int]] = {}
        for qid, context in zip(held_out["id"], held_out["context"]):
            doc = doc_ids.setdefault(context, f"p{len(doc_ids)}")
            qrels[qid] = {doc: 1}
        return RetrievalData(list(held_out["id"]), list(held_out["question"]), list(doc_ids.values()),
                             list(doc_ids), qrels)

    def train_texts(self) -> list[str]:
        train = self.articles()[0]
        contexts = list(dict.fromkeys(train["context"]))
        texts = [s for context in contexts for s in sentences(context)]
        if self.paragraphs:
            texts += contexts
        texts += [w for context in contexts for w in sentence_windows(context, self.sentence_windows)]
        texts += list(train["question"])
        for kind, path in self._extra_files().items():
            texts += [t for t in EXTRA_READERS[kind](path) if t.strip()]
        return texts

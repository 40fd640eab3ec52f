"""`task=squad_rerank`: an offline reranking benchmark from SQuAD v1.1 dev, split by article as
`task=squad_offline` splits it (no article on both sides).

Training triples (query, positive, negative): each training question with the paragraph it was asked
on and `negatives` other paragraphs of the same article (hard negatives: same topic, no answer), drawn
with the run's seed. Evaluation: each held-out question reranks every paragraph of its article, the
one it was asked on relevant.
"""

from __future__ import annotations

import random

import datasets

from grain.errors import GrainError
from grain.tasks.question_answering.squad import HeldOutArticles
from grain.tasks.reranking.task import RerankData, RerankingTask


def paragraphs_by_article(rows: datasets.Dataset) -> dict[str, list[str]]:
    """{article title: its distinct paragraphs, in order of appearance}."""
    out: dict[str, dict[str, None]] = {}
    for title, context in zip(rows["title"], rows["context"]):
        out.setdefault(title, {})[context] = None
    return {title: list(contexts) for title, contexts in out.items()}


class SquadRerankDataModule(HeldOutArticles, RerankingTask):
    """SQuAD dev split by article (`HeldOutArticles`) as reranking within each article."""

    def __init__(self, negatives: int = 1, **kwargs):
        super().__init__(**kwargs)
        if negatives < 1:
            raise GrainError(f"task.datamodule.negatives={negatives}: the hard negatives per training question, "
                             f"at least 1")
        self.negatives = negatives

    def source_signature(self, split: str) -> list:
        return [*self.squad_signature(), self.negatives]

    def train_rows(self) -> datasets.Dataset:
        train = self.articles()[0]
        paragraphs = paragraphs_by_article(train)
        rng = random.Random(self.seed)
        rows: dict[str, list[str]] = {"query": [], "positive": [], "negative": []}
        for title, question, context in zip(train["title"], train["question"], train["context"]):
            others = [p for p in paragraphs[title] if p != context]
            for negative in rng.sample(others, min(self.negatives, len(others))):
                rows["query"].append(question)
                rows["positive"].append(context)
                rows["negative"].append(negative)
        return datasets.Dataset.from_dict(rows)

    def rerank_data(self, split: str) -> RerankData:
        held_out = self.articles()[1]
        paragraphs = paragraphs_by_article(held_out)
        ids = {title: {p: f"{title}/{i}" for i, p in enumerate(ps)} for title, ps in paragraphs.items()}
        candidates = {title: [(ids[title][p], p) for p in ps] for title, ps in paragraphs.items()}
        return RerankData(
            list(held_out["id"]), list(held_out["question"]), [candidates[t] for t in held_out["title"]],
            {qid: {ids[title][context]: 1} for qid, title, context in zip(held_out["id"], held_out["title"],
                                                                          held_out["context"])},
        )

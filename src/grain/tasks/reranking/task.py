"""The reranking task type: a cross-encoder (a pair classifier with one logit) scores (query, passage)
pairs; evaluation reranks each query's candidate passages by that score, with trec_eval's measures
(nDCG@10, MRR@10: `grain.tasks.ir.retrieval_metrics`).

Training rows are triples {query, positive, negative}: each is two (query, passage) pairs, the positive
labelled 1 and the negative 0, collated next to each other (rows 0 and 1, 2 and 3, ... of a batch), so
that a teacher fine-tunes on them with binary cross-entropy (the head's `problem_type`
multi_label_classification, one logit) and a student distils with `distillation.score_loss=mse` (the
teacher's score of every pair) or `margin_mse` (the margin of each pair of rows; Hofstätter et al. 2020).
Or they are labelled pairs {query, passage, label} (`PAIR_COLUMNS`; a label in [0, 1], graded labels
as soft targets of the same binary cross-entropy), one row each: `mse` distils them, `margin_mse`, which
reads pairs of rows, is refused for them.
Teacher scores may come with the rows (`SCORE_COLUMNS`: a pair's `score`, a triple's `positive_score` and
`negative_score`; raw logits, as a cross-encoder gives them before its sigmoid, e.g. the published scores
of an ensemble): the student's score loss then compares with them (batch key `TEACHER_SCORES_KEY`) instead
of the teacher's forward, which runs only for GRAIN's hidden-state loss. A pair with a score needs no label.
Eval rows are every candidate pair {query, passage, row (the query's position), doc (the candidate's)}.

The saved model is a sentence-transformers `CrossEncoder` folder as it stands (transformers' sequence
classification with one label): `CrossEncoder(dir)` loads it (with `trust_remote_code=True` where grain
is not installed) and applies a sigmoid to the logit by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from omegaconf import DictConfig
from transformers import AutoModelForSequenceClassification

from grain.errors import GrainError
from grain.tasks.base import TEACHER_SCORES_KEY, Task
from grain.tasks.gather import GatheredRows
from grain.tasks.ir import judged_subset, retrieval_metrics

METRICS = ("ndcg@10", "mrr@10")
TRIPLE_COLUMNS = ("query", "positive", "negative")
PAIR_COLUMNS = ("query", "passage", "label")
# the teacher's scores a training file may carry: of a pair, and of a triple's positive and negative
SCORE_COLUMNS = {"pair": ("score",), "triple": ("positive_score", "negative_score")}


@dataclass
class RerankData:
    """One eval split: query ids and texts; per query its candidates (document id, text), in the order a
    first stage gave them; relevance judgments {query id: {document id: grade}} (grade > 0: relevant)."""

    query_ids: list[str]
    queries: list[str]
    candidates: list[list[tuple[str, str]]]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)

    def rows(self) -> datasets.Dataset:
        """{query, passage, row, doc}: every candidate pair."""
        out: dict[str, list] = {"query": [], "passage": [], "row": [], "doc": []}
        for row, (query, candidates) in enumerate(zip(self.queries, self.candidates)):
            for doc, (_, passage) in enumerate(candidates):
                out["query"].append(query)
                out["passage"].append(passage)
                out["row"].append(row)
                out["doc"].append(doc)
        return datasets.Dataset.from_dict(out)

    def subset(self, keep: list[int]) -> "RerankData":
        ids = [self.query_ids[i] for i in keep]
        return RerankData(ids, [self.queries[i] for i in keep], [self.candidates[i] for i in keep],
                          {q: self.qrels[q] for q in ids if q in self.qrels})


class RerankEvaluator(GatheredRows):
    """Collects the score (the one logit) of every candidate pair, then ranks each query's candidates by
    it and computes nDCG@10 and MRR@10 (`retrieval_metrics`)."""

    gathered = ("rows",)

    def __init__(self, data: RerankData):
        self.data = data
        self.rows: list[tuple[int, int, float]] = []  # (row, doc, score)

    def update(self, batch: dict, outputs) -> None:
        scores = outputs.logits.float().reshape(-1).cpu().tolist()
        self.rows.extend(zip(batch["row"].tolist(), batch["doc"].tolist(), scores))

    def compute(self) -> dict[str, float]:
        expected = sum(len(c) for c in self.data.candidates)
        if len({(row, doc) for row, doc, _ in self.rows}) != expected:
            raise ValueError(f"RerankEvaluator: scored {len(self.rows)} of {expected} candidate pairs")
        run: dict[str, dict[str, float]] = {qid: {} for qid in self.data.query_ids}
        for row, doc, score in self.rows:
            run[self.data.query_ids[row]][self.data.candidates[row][doc][0]] = score
        metrics = retrieval_metrics(self.data.qrels, run)
        return {name: metrics[name] for name in METRICS}


class RerankingTask(Task):
    """Cross-encoder reranking (see the module docstring). A data module implements
    `rerank_data(split) -> RerankData` and `train_rows() -> datasets.Dataset` (the training rows:
    {query, positive, negative} triples or {query, passage, label} pairs); `max_eval_samples` keeps that
    many queries (seeded), each with all its candidates."""

    auto_model_class = AutoModelForSequenceClassification
    num_labels = 1
    paired_training_rows = True
    # binary cross-entropy on the one logit when the teacher fine-tunes on the labels (transformers' loss
    # for this problem type; its default for one label would be MSE)
    head_settings = {"problem_type": "multi_label_classification"}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._eval_data: dict[str, RerankData] = {}  # by split: `eval_data`, read once

    def rerank_data(self, split: str) -> RerankData:
        raise NotImplementedError

    def train_rows(self) -> datasets.Dataset:
        raise NotImplementedError

    def _max_samples(self, split: str) -> int | None:
        return self.max_train_samples if split == "train" else None  # queries are subset in `eval_data`

    def cache_signature(self) -> Any:
        return [self.max_eval_samples]

    def eval_data(self, split: str) -> RerankData:
        """`rerank_data(split)`: the judged queries with candidates, `max_eval_samples` of them (seeded), once."""
        if split not in self._eval_data:
            data = self.rerank_data(split)
            keep = judged_subset(data.query_ids, data.qrels, self.max_eval_samples, self.seed,
                                 usable=[bool(c) for c in data.candidates])
            if not keep:
                raise GrainError(f"task={type(self).__name__}: no query of the {split} split has candidates and a "
                                 f"relevant document (qrels)")
            self._eval_data[split] = data.subset(keep)
        return self._eval_data[split]

    def load_split(self, split: str) -> datasets.Dataset:
        if split == "train":
            return self.train_rows()
        return self.eval_data(split).rows()

    def tokenize_split(self, split: str, raw: datasets.Dataset) -> datasets.Dataset:
        """Train: the (query, positive) pair's features and the (query, negative) pair's under `negative_`
        names (with the triple's score columns where given), or a pair's features with its `labels`
        ([label]) and its teacher score ([score]) where given; eval: each candidate pair's features with
        `row` and `doc`."""
        if split == "train" and "passage" in raw.column_names:
            def tokenize(rows):
                pairs = self.tokenizer(rows["query"], rows["passage"], truncation=True, max_length=self.max_length)
                if "label" in rows:
                    pairs["labels"] = [[float(label)] for label in rows["label"]]
                if "score" in rows:
                    pairs[TEACHER_SCORES_KEY] = [[float(score)] for score in rows["score"]]
                return pairs
        elif split == "train":
            def tokenize(rows):
                positive = self.tokenizer(rows["query"], rows["positive"], truncation=True, max_length=self.max_length)
                negative = self.tokenizer(rows["query"], rows["negative"], truncation=True, max_length=self.max_length)
                return {**positive, **{f"negative_{k}": v for k, v in negative.items()}}
        else:
            def tokenize(rows):
                return self.tokenizer(rows["query"], rows["passage"], truncation=True, max_length=self.max_length)
        keep = [c for c in ("row", "doc", *SCORE_COLUMNS["triple"]) if c in raw.column_names]
        return raw.map(tokenize, batched=True, remove_columns=[c for c in raw.column_names if c not in keep],
                       desc=f"tokenize {split}")

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Training triples become their two pairs, positive then negative, labelled 1.0 and 0.0
        ([rows, 1] labels, as binary cross-entropy on one logit reads them), each with its teacher score
        ([rows, 1] under `TEACHER_SCORES_KEY`) where the triple has them; pairs and eval rows are collated
        as they are."""
        if not features or "negative_input_ids" not in features[0]:
            return self.collator(features)
        rows = []
        for feature in features:
            inputs = {k: v for k, v in feature.items() if k not in SCORE_COLUMNS["triple"]}
            for side, label in (("positive", 1.0), ("negative", 0.0)):
                negative = side == "negative"
                row = {k.removeprefix("negative_"): v for k, v in inputs.items() if k.startswith("negative_") == negative}
                if f"{side}_score" in feature:
                    row[TEACHER_SCORES_KEY] = [float(feature[f"{side}_score"])]
                rows.append(row | {"labels": [label]})
        return self.collator(rows)

    def make_evaluator(self, split: str) -> RerankEvaluator:
        return RerankEvaluator(self.eval_data(split))

    @classmethod
    def validate_settings(cls, cfg: DictConfig) -> None:
        """The reranker's head has one logit: KD on it is constant, so score_loss=kd is refused."""
        if cfg.distillation.get("score_loss") == "kd" and float(cfg.distillation.kd_weight) > 0:
            raise GrainError(
                f"distillation.score_loss=kd: task={cfg.task.name} scores pairs with one logit, whose softmax is "
                f"constant; use distillation.score_loss=mse (the teacher's scores) or margin_mse (their margins)"
            )

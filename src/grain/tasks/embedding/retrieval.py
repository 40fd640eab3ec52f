"""Retrieval: queries ranked against a corpus by the cosine of their sentence embeddings, scored with
trec_eval's measures through pytrec_eval (nDCG@10, MRR@10, Recall@100), on BEIR-layout files (`corpus.jsonl`,
`queries.jsonl`, `qrels/<split>.tsv`: Thakur et al. 2021, "BEIR") or a data module's own queries.

An eval split's rows are the queries (kind 0) and then the corpus (kind 1), each with its position
(`row`) in the data module's `RetrievalData`; the evaluator embeds them all, ranks the top `top_k`
documents of each query and hands the run to pytrec_eval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from grain.errors import GrainError
from grain.tasks.cache import file_signature
from grain.tasks.embedding.task import EmbeddedRows, EmbeddingTask
from grain.tasks.ir import BeirFolder, beir_document, judged_subset, retrieval_metrics
from grain.tasks.text_files import check_utf8

QUERY, DOCUMENT = 0, 1
METRICS = ("ndcg@10", "mrr@10", "recall@100")


@dataclass
class RetrievalData:
    """One eval split: query ids and texts, document ids and texts (in row order), and the relevance
    judgments {query id: {document id: grade}} (grade > 0: relevant)."""

    query_ids: list[str]
    queries: list[str]
    doc_ids: list[str]
    documents: list[str]
    qrels: dict[str, dict[str, int]]

    def metrics(self, queries: torch.Tensor, documents: torch.Tensor, top_k: int = 100) -> dict[str, float]:
        """`retrieval_metrics` of each query's `top_k` documents ranked by the dot product of the unit-norm
        embeddings `queries` [len(query_ids), dim] and `documents` [len(doc_ids), dim] (their cosine)."""
        top = (queries @ documents.T).topk(min(top_k, len(self.doc_ids)), dim=1)
        run = {
            qid: {self.doc_ids[j]: float(score) for score, j in zip(scores.tolist(), indices.tolist())}
            for qid, scores, indices in zip(self.query_ids, top.values, top.indices)
        }
        return retrieval_metrics(self.qrels, run)

    def rows(self) -> datasets.Dataset:
        """{text, kind, row}: the queries with relevance judgments, then every document."""
        texts = self.queries + self.documents
        kinds = [QUERY] * len(self.queries) + [DOCUMENT] * len(self.documents)
        rows = list(range(len(self.queries))) + list(range(len(self.documents)))
        return datasets.Dataset.from_dict({"text": texts, "kind": kinds, "row": rows})


class RetrievalEvaluator(EmbeddedRows):
    """Embeds one eval split's queries and documents (`embed(outputs, batch)`: the task's sentence
    embeddings), ranks each query's `top_k` documents by cosine and computes `retrieval_metrics`."""

    def __init__(self, embed, data: RetrievalData, top_k: int = 100):
        super().__init__(embed)
        self.data, self.top_k = data, top_k

    def compute(self) -> dict[str, float]:
        queries = self.by_kind(QUERY, len(self.data.query_ids))
        documents = self.by_kind(DOCUMENT, len(self.data.doc_ids))
        return self.data.metrics(queries, documents, self.top_k)


class RetrievalTask(EmbeddingTask):
    """Retrieval eval splits. A data module implements `retrieval_data(split) -> RetrievalData` and
    `train_texts() -> list[str]` (the unlabelled distillation text); `max_eval_samples` keeps that many
    judged queries (seeded) and the whole corpus."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._eval_data: dict[str, RetrievalData] = {}  # by split: `eval_data`, read once

    def retrieval_data(self, split: str) -> RetrievalData:
        raise NotImplementedError

    def train_texts(self) -> list[str]:
        raise NotImplementedError

    def _max_samples(self, split: str) -> int | None:
        return self.max_train_samples if split == "train" else None  # queries are subset in `eval_data`

    def eval_data(self, split: str) -> RetrievalData:
        """`retrieval_data(split)` with only judged queries, `max_eval_samples` of them (seeded), once."""
        cache = self._eval_data
        if split not in cache:
            data = self.retrieval_data(split)
            keep = judged_subset(data.query_ids, data.qrels, self.max_eval_samples, self.seed)
            data.query_ids = [data.query_ids[i] for i in keep]
            data.queries = [data.queries[i] for i in keep]
            data.qrels = {q: data.qrels[q] for q in data.query_ids}
            cache[split] = data
        return cache[split]

    def cache_signature(self):
        return [self.max_eval_samples]

    def load_split(self, split: str) -> datasets.Dataset:
        if split == "train":
            texts = self.train_texts()
            if not texts:
                raise GrainError(f"task={type(self).__name__}: no distillation text (the training split is empty)")
            return datasets.Dataset.from_dict({"text": texts})
        return self.eval_data(split).rows()

    def make_evaluator(self, split: str) -> RetrievalEvaluator:
        return RetrievalEvaluator(self.embeddings, self.eval_data(split))


# --- BEIR-layout folders ------------------------------------------------------------------------------


class BeirRetrievalDataModule(RetrievalTask):
    """`task=retrieval`: your own BEIR-layout folder (`data_folder`: corpus.jsonl {_id, title, text},
    queries.jsonl {_id, text}, qrels/<split>.tsv), evaluated on `eval_split`'s judgments; distilled on
    `train_file` (one text per line) or, without one, on the folder's queries and documents (text only:
    no relevance judgment is trained on)."""

    def __init__(self, data_folder: str, eval_split: str = "test", train_file: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.beir = BeirFolder(Path(data_folder).expanduser(), eval_split, "retrieval")
        self.eval_split = eval_split
        self.train_file = Path(train_file).expanduser() if train_file else None

    def source_signature(self, split: str) -> list:
        files = self.beir.files() + ([self.train_file] if split == "train" and self.train_file else [])
        return [file_signature(f) for f in files]

    def retrieval_data(self, split: str) -> RetrievalData:
        queries, corpus, qrels = self.beir.read()
        return RetrievalData([str(q["_id"]) for q in queries], [q["text"] for q in queries],
                             [str(d["_id"]) for d in corpus], [beir_document(d) for d in corpus], qrels)

    def train_texts(self) -> list[str]:
        if self.train_file is not None:
            if not self.train_file.is_file():
                raise GrainError(f"task.datamodule.train_file={self.train_file} does not exist; one text per line")
            check_utf8(self.train_file)
            return [line for line in self.train_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        data = self.retrieval_data(self.eval_split)
        return data.queries + data.documents

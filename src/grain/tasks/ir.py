"""Information retrieval's shared pieces: trec_eval's measures of a ranking (through pytrec_eval) and the
BEIR folder layout (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`: Thakur et al. 2021, "BEIR"),
read by the retrieval (grain.tasks.embedding) and reranking (grain.tasks.reranking) task types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from grain.errors import GrainError
from grain.tasks.text_files import check_utf8


def per_query_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """{query id: {ndcg@10, mrr@10, recall@100}} of `run` ({query id: {document id: score}}, higher first)
    against `qrels`, for every judged query (one with a relevant document; a query the run misses scores 0),
    computed by trec_eval's measures (pytrec_eval: ndcg_cut_10, recall_100, and recip_rank on each query's
    top 10). GrainError where no query is judged."""
    import pytrec_eval  # noqa: PLC0415  (the embeddings and reranking extras)

    judged = {q: docs for q, docs in qrels.items() if any(grade > 0 for grade in docs.values())}
    if not judged:
        raise GrainError("retrieval: no query has a relevant document in the relevance judgments (qrels)")
    scores = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    top10 = {q: dict(sorted(docs.items(), key=lambda item: -item[1])[:10]) for q, docs in run.items()}
    ranks = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top10)
    return {q: {"ndcg@10": scores.get(q, {}).get("ndcg_cut_10", 0.0), "mrr@10": ranks.get(q, {}).get("recip_rank", 0.0),
                "recall@100": scores.get(q, {}).get("recall_100", 0.0)} for q in judged}


def retrieval_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """nDCG@10, MRR@10 and Recall@100 of `run` against `qrels`: `per_query_metrics`, each the mean over the
    judged queries."""
    per_query = per_query_metrics(qrels, run)
    return {name: sum(q[name] for q in per_query.values()) / len(per_query) for name in ("ndcg@10", "mrr@10", "recall@100")}


def judged_subset(query_ids: list[str], qrels: dict[str, dict[str, int]], max_samples: int | None, seed: int,
                  usable: list[bool] | None = None) -> list[int]:
    """Positions of the queries that have a relevant document (and are `usable`, where given), in order;
    `max_samples` of them drawn with `seed` where there are more (None: all)."""
    keep = [i for i, q in enumerate(query_ids)
            if (usable is None or usable[i]) and any(g > 0 for g in qrels.get(q, {}).values())]
    if max_samples is not None and max_samples < len(keep):
        picked = torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed))[:max_samples].tolist()
        keep = sorted(keep[i] for i in picked)
    return keep


def read_jsonl(path: Path, fields: tuple[str, ...]) -> list[dict]:
    """The rows of a JSON-lines file, each with `fields` (GrainError naming the file and line)."""
    check_utf8(path)
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise GrainError(f"{path}, line {line_no}: not JSON ({err.msg}); one JSON object per line") from None
            missing = [f for f in fields if f not in row]
            if missing:
                raise GrainError(f"{path}, line {line_no}: no {missing} field; BEIR rows have {list(fields)}")
            rows.append(row)
    return rows


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR's qrels TSV (a header, then query-id, corpus-id, score) as {query id: {document id: score}}."""
    check_utf8(path)
    qrels: dict[str, dict[str, int]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for line_no, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) < 3 or not parts[2].strip().lstrip("-").isdigit():
            raise GrainError(f"{path}, line {line_no}: expected query-id<TAB>corpus-id<TAB>integer score, got {line!r}")
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


def beir_document(row: dict) -> str:
    """A BEIR document's text as sentence-transformers' retrieval evaluators embed it: title and text."""
    return f"{row.get('title', '')} {row['text']}".strip()


@dataclass(frozen=True)
class BeirFolder:
    """A BEIR folder (`folder`: corpus.jsonl {_id, title, text}, queries.jsonl {_id, text},
    qrels/<split>.tsv) that `task` (the option named in its errors) evaluates on `split`'s judgments."""

    folder: Path
    split: str
    task: str

    def file(self, relative: str) -> Path:
        """The folder's file `relative`; GrainError naming it and the layout where it is missing."""
        path = self.folder / relative
        if not path.is_file():
            raise GrainError(f"task={self.task}: no {path}; task.datamodule.data_folder must be a BEIR folder with "
                             f"corpus.jsonl, queries.jsonl and qrels/{self.split}.tsv")
        return path

    def files(self) -> list[Path]:
        return [self.file(name) for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{self.split}.tsv")]

    def read(self) -> tuple[list[dict], list[dict], dict[str, dict[str, int]]]:
        """(query rows, corpus rows, relevance judgments), every file checked."""
        corpus, queries, qrels = self.files()
        return read_jsonl(queries, ("_id", "text")), read_jsonl(corpus, ("_id", "text")), read_qrels(qrels)

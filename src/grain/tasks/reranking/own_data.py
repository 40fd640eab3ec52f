"""`task=reranking`: your own reranking data. Evaluation reads a BEIR folder (`corpus.jsonl`,
`queries.jsonl`, `qrels/<eval_split>.tsv`) and reranks each judged query's candidates: those of
`candidates_file` (a TREC run, `query-id Q0 doc-id rank score tag`, or a TSV `query-id<TAB>doc-id[<TAB>score]`
with a header), or else the top `top_k` documents of BM25 over the corpus (bm25s, Lù 2024). Training
reads `train_file` (csv, tsv, json, jsonl, parquet; the texts themselves, not ids): triples {query,
positive, negative}, or labelled pairs {query, passage, label} with labels in [0, 1] (1 relevant, 0 not;
graded between). Either may carry a teacher's scores (raw logits; `SCORE_COLUMNS`): a triple's
`positive_score` and `negative_score`, a pair's `score` (a pair with a score needs no label), which the
student distils instead of the teacher's own.
"""

from __future__ import annotations

import math
from pathlib import Path

import datasets
from omegaconf import DictConfig

from grain.errors import GrainError
from grain.tasks.cache import file_signature
from grain.tasks.ir import BeirFolder, beir_document
from grain.tasks.own_data import as_number, load_file, require_columns, require_rows, resolve_file
from grain.tasks.reranking.task import PAIR_COLUMNS, SCORE_COLUMNS, TRIPLE_COLUMNS, RerankData, RerankingTask
from grain.tasks.text_files import check_utf8


def read_candidates(path: Path) -> dict[str, list[str]]:
    """{query id: candidate document ids, best first} from a TREC run file (6 columns, ranked by score)
    or a TSV with a header (query-id, doc-id[, score]: file order, or by score where given)."""
    check_utf8(path)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    scored: dict[str, list[tuple[float, int, str]]] = {}
    trec = bool(lines) and len(lines[0].split()) == 6 and lines[0].split()[1] == "Q0"
    for line_no, line in enumerate(lines if trec else lines[1:], start=1 if trec else 2):
        parts = line.split() if trec else line.split("\t")
        try:
            query, doc = (parts[0], parts[2]) if trec else (parts[0], parts[1])
            score = float(parts[4]) if trec else (float(parts[2]) if len(parts) > 2 else 0.0)
        except (IndexError, ValueError):
            raise GrainError(f"{path}, line {line_no}: expected a TREC run line (query-id Q0 doc-id rank score tag) "
                             f"or query-id<TAB>doc-id[<TAB>score], got {line!r}") from None
        scored.setdefault(query, []).append((-score, len(scored.get(query, [])), doc))
    return {query: [doc for *_, doc in sorted(rows)] for query, rows in scored.items()}


def bm25_candidates(queries: list[str], documents: list[str], top_k: int) -> list[list[int]]:
    """Per query the indices of its `top_k` documents by BM25 (bm25s, its default Lucene variant and
    English stopwords), best first."""
    try:
        import bm25s  # noqa: PLC0415  (the reranking extra)
    except ImportError:
        raise GrainError("task=reranking without task.datamodule.candidates_file ranks candidates with BM25, which "
                         "needs bm25s: pip install 'grain[reranking]', or give a candidates file") from None
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(documents, stopwords="en", show_progress=False), show_progress=False)
    k = min(top_k, len(documents))
    indices, _ = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False), k=k,
                                    show_progress=False)
    return [list(map(int, row)) for row in indices]


# how a numeric training column is read: (what a value must be, the rest of the one-line error after "is not")
LABEL = (lambda value: 0.0 <= value <= 1.0,  # NaN fails too
         "a number in [0, 1]; give 1 for a relevant passage, 0 for another (graded labels between)")
SCORE = (math.isfinite, "a finite number; give the teacher's score of the pair (a raw logit)")


def _with_numbers(path: Path, table: datasets.Dataset, rows: datasets.Dataset, columns: dict) -> datasets.Dataset:
    """`rows` with each of `columns` ({name: LABEL or SCORE}) of `table` read as numbers; GrainError in one
    line naming the first row whose value is not what its column needs."""
    for column, (valid, expected) in columns.items():
        given = table[column]
        numbers = [as_number(value) for value in given]
        bad = next((row for row, number in enumerate(numbers) if not valid(number)), None)
        if bad is not None:
            raise GrainError(f"{path}, row {bad + 1}: {column} {given[bad]!r} is not {expected}")
        rows = rows.add_column(column, numbers)
    return rows


class RerankingDataModule(RerankingTask):
    """`task=reranking`: see the module docstring. `data_folder`: the BEIR folder; `eval_split`: its qrels
    file; `train_file`: the triples; `candidates_file`: the first stage's run (else BM25, `top_k`)."""

    def __init__(self, data_folder: str, train_file: str | None = None, eval_split: str = "test",
                 candidates_file: str | None = None, top_k: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.beir = BeirFolder(Path(data_folder).expanduser(), eval_split, "reranking")
        self.train_file = train_file
        self.eval_split = eval_split
        self.candidates_file = Path(candidates_file).expanduser() if candidates_file else None
        self.top_k = top_k

    def source_signature(self, split: str) -> list:
        if split == "train":
            return [file_signature(resolve_file("reranking", "train", self.train_file))]
        files = self.beir.files() + ([self.candidates_file] if self.candidates_file else [])
        return [*(file_signature(f) for f in files), self.top_k]

    def rerank_data(self, split: str) -> RerankData:
        queries, corpus, qrels = self.beir.read()
        queries = [q for q in queries if str(q["_id"]) in qrels]
        documents = {str(d["_id"]): beir_document(d) for d in corpus}
        query_ids = [str(q["_id"]) for q in queries]
        if self.candidates_file is not None:
            if not self.candidates_file.is_file():
                raise GrainError(f"task.datamodule.candidates_file={self.candidates_file}: no such file; give a TREC "
                                 f"run or a query-id/doc-id TSV, or null to rank with BM25")
            run = read_candidates(self.candidates_file)
            unknown = next((d for q in query_ids for d in run.get(q, []) if d not in documents), None)
            if unknown is not None:
                raise GrainError(f"{self.candidates_file}: document {unknown!r} is not in {self.beir.file('corpus.jsonl')}")
            candidates = [[(d, documents[d]) for d in run.get(q, [])[: self.top_k]] for q in query_ids]
        else:
            ids = list(documents)
            ranked = bm25_candidates([q["text"] for q in queries], [documents[i] for i in ids], self.top_k)
            candidates = [[(ids[j], documents[ids[j]]) for j in row] for row in ranked]
        return RerankData(query_ids, [q["text"] for q in queries], candidates, qrels)

    def train_rows(self) -> datasets.Dataset:
        """The training rows of `train_file`: its triples, or its pairs with labels read as numbers in
        [0, 1], each with its teacher scores where the file has them (finite numbers); GrainError in one
        line for other columns, a label outside [0, 1], a score that is not a finite number, or a triple
        file with one of its two score columns."""
        path = resolve_file("reranking", "train", self.train_file,
                            kind="a file of triples (query, positive, negative) or labelled pairs (query, passage, label)")
        table = load_file(path, self.cache_dir)
        require_rows(str(path), table)
        if "positive" in table.column_names or "passage" not in table.column_names:
            require_columns(str(path), table, {f"the {c} column (or query, passage, label)": c for c in TRIPLE_COLUMNS})
            given = [c for c in SCORE_COLUMNS["triple"] if c in table.column_names]
            if len(given) == 1:
                raise GrainError(f"{path}: a {given[0]} column without its other half; give both positive_score "
                                 f"and negative_score (the teacher's scores), or neither")
            rows = table.select_columns(list(TRIPLE_COLUMNS))
            return _with_numbers(path, table, rows, {column: SCORE for column in given})
        if "label" not in table.column_names and "score" not in table.column_names:
            raise GrainError(f"{path}: pairs (query, passage) need a label column (1 relevant, 0 not) or a score "
                             f"column (the teacher's score, a raw logit); found {table.column_names}")
        require_columns(str(path), table, {f"the {c} column": c for c in PAIR_COLUMNS[:2]})
        columns = {"label": LABEL, **{column: SCORE for column in SCORE_COLUMNS["pair"]}}
        return _with_numbers(path, table, table.select_columns(["query", "passage"]),
                             {column: read for column, read in columns.items() if column in table.column_names})

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        """Read every file the run `cfg` reads (the training rows where it trains, the BEIR folder, the
        candidates) before anything trains; GrainError in one line naming the file and the fix, also for
        `distillation.score_loss=margin_mse` on pairs (it reads a positive and a negative per row), and for
        scored pairs without labels where the run would fine-tune its teacher or use hard labels."""
        module = cls.unloaded(cfg)
        if cls.trains(cfg):
            rows = module.train_rows()
            pairs = "passage" in rows.column_names
            if pairs and cfg.distillation.get("score_loss") == "margin_mse":
                raise GrainError(
                    f"distillation.score_loss=margin_mse reads (positive, negative) pairs of rows; "
                    f"task.train_file={module.train_file} holds pairs: use distillation.score_loss=mse, "
                    f"or a file of triples (query, positive, negative)"
                )
            if pairs and "label" not in rows.column_names:
                if "teacher" in cfg.stages and not cfg.teacher.path:
                    raise GrainError(
                        f"task.train_file={module.train_file} holds scored pairs without labels, so grain cannot "
                        f"fine-tune a teacher on them: give teacher.path=<a cross-encoder>, or a label column"
                    )
                if float(cfg.distillation.hard_label_weight) > 0:
                    raise GrainError(
                        f"distillation.hard_label_weight={cfg.distillation.hard_label_weight}: "
                        f"task.train_file={module.train_file} has no label column; set it to 0 (the scores are "
                        f"distilled), or add labels"
                    )
        module.eval_data("validation")

"""A paired bootstrap of a compact reranker's MRR@10 over its teacher's, on task=squad_rerank's held-out
questions (docs/results/rerank_squad).

    GRAIN_DATA_DIR=../shared/data .venv/bin/python scripts/rerank-bootstrap.py TEACHER COMPACT [QUESTIONS] [--save DIR]

Scores every candidate pair of the held-out questions (QUESTIONS of them, seeded as the run's evaluation
draws them; all 2,043 without) with sentence-transformers' CrossEncoder for both models (texts truncated at
128 tokens, as experiment=rerank_cpu), takes each question's MRR@10 by grain's own measure (trec_eval's
recip_rank on the top 10, `grain.tasks.ir.per_query_metrics`), and prints both MRR@10s, their ratio and
the 2.5/50/97.5 percentiles of the ratio over 10,000 resamples of the questions (the same resample for
both models). Diagnostic only: grain's own evaluation gives the runs' numbers, which this reproduces on
the same questions.

TEACHER and COMPACT are model folders, or a `.npy` of a model's reciprocal ranks that `--save DIR` wrote
before (DIR/teacher-<questions>.npy, DIR/student-<questions>.npy) on the same questions: the teacher on
all 2,043 questions takes 19-22 minutes on 2 cores, so it is scored once.
"""

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from grain.tasks.ir import per_query_metrics
from grain.tasks.reranking.squad_rerank import SquadRerankDataModule


def reciprocal_ranks(folder: str, data) -> np.ndarray:
    """Each question's MRR@10 (grain's trec_eval measure, `per_query_metrics`) under the CrossEncoder `folder`."""
    model = CrossEncoder(folder, device="cpu", max_length=128)
    run = {}
    for qid, query, candidates in zip(data.query_ids, data.queries, data.candidates):
        scores = model.predict([[query, passage] for _, passage in candidates], batch_size=32,
                               activation_fn=torch.nn.Identity())
        run[qid] = {doc: float(score) for (doc, _), score in zip(candidates, scores)}
    per_query = per_query_metrics(data.qrels, run)
    return np.array([per_query[qid]["mrr@10"] for qid in data.query_ids])


def ranks_of(model: str, data, save: Path | None, name: str) -> np.ndarray:
    """The reciprocal ranks of a model folder (scored now, and saved under `save`), or of a saved `.npy`."""
    if model.endswith(".npy"):
        ranks = np.load(model)
        if len(ranks) != len(data.query_ids):
            raise SystemExit(f"{model}: {len(ranks)} questions, but this evaluation has {len(data.query_ids)}; "
                             f"give the QUESTIONS it was saved with")
        return ranks
    ranks = reciprocal_ranks(model, data)
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        np.save(save / f"{name}-{len(ranks)}.npy", ranks)
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", help="the teacher's folder, or its saved reciprocal ranks (.npy)")
    parser.add_argument("compact", help="the compact model's folder, or its saved reciprocal ranks (.npy)")
    parser.add_argument("questions", nargs="?", type=int, default=None, help="held-out questions (all without)")
    parser.add_argument("--save", type=Path, default=None, help="a folder for the scored models' reciprocal ranks")
    args = parser.parse_args()
    torch.set_num_threads(2)
    module = SquadRerankDataModule(local_file="squad/v1.1/dev.json", eval_fraction=0.2, tokenizer=None,
                                   data_dir=os.environ["GRAIN_DATA_DIR"], cache_dir=None, seed=42,
                                   max_eval_samples=args.questions, max_length=128)
    data = module.eval_data("validation")
    teacher = ranks_of(args.teacher, data, args.save, "teacher")
    student = ranks_of(args.compact, data, args.save, "student")
    print(f"{len(teacher)} questions: teacher MRR@10 {teacher.mean():.4f}, student {student.mean():.4f}, "
          f"ratio {student.mean() / teacher.mean():.4f}")
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(10_000):
        drawn = rng.integers(0, len(teacher), len(teacher))
        ratios.append(student[drawn].mean() / teacher[drawn].mean())
    low, mid, high = np.percentile(ratios, [2.5, 50, 97.5])
    print(f"paired bootstrap of the ratio: 2.5% {low:.4f}, 50% {mid:.4f}, 97.5% {high:.4f}")


if __name__ == "__main__":
    main()

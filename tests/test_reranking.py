"""The reranking task type: cross-encoders trained on triples (pairs collated positive then negative),
candidates reranked and scored with trec_eval's measures, BM25 and run-file candidates, and a run whose
compact folder is a sentence-transformers CrossEncoder that loads where grain is not installed."""

import json
import textwrap
from types import SimpleNamespace

import pytest
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoModelForSequenceClassification

import grain  # noqa: F401  (registers the compact classes)
from grain.config import validate_config
from grain.errors import GrainError
from grain.tasks.reranking.own_data import RerankingDataModule, bm25_candidates, read_candidates
from grain.tasks.reranking.task import RerankData, RerankEvaluator
from tests.helpers.configs import compose_config
from tests.helpers.hidden_grain import HIDE_GRAIN, run_without_grain
from tests.helpers.paths import FIXTURES
from tests.helpers.runs import readme_tiny_run

BEIR, TRIPLES, PAIRS_FILE = FIXTURES / "beir", FIXTURES / "rerank" / "train.jsonl", FIXTURES / "rerank" / "train_pairs.csv"


def test_reranking_scores_of_a_known_ranking():
    data = RerankData(["a", "b"], ["qa", "qb"], [[("x", "X"), ("y", "Y")], [("x", "X"), ("y", "Y"), ("z", "Z")]],
                      {"a": {"x": 1}, "b": {"z": 1}})
    evaluator = RerankEvaluator(data)
    batch = {"row": torch.tensor([0, 0, 1, 1, 1]), "doc": torch.tensor([0, 1, 0, 1, 2])}
    evaluator.update(batch, SimpleNamespace(logits=torch.tensor([[0.9], [0.1], [0.5], [0.7], [0.6]])))
    got = evaluator.compute()
    assert got["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)  # a: x first; b: z second
    assert set(got) == {"ndcg@10", "mrr@10"}
    with pytest.raises(ValueError, match="scored 2 of 5"):
        partial = RerankEvaluator(data)
        partial.update({"row": torch.tensor([0, 0]), "doc": torch.tensor([0, 1])}, SimpleNamespace(logits=torch.ones(2, 1)))
        partial.compute()


def test_triples_collate_into_positive_then_negative_pairs(tokenizer):
    datamodule = RerankingDataModule(data_folder=str(BEIR), train_file=str(TRIPLES), tokenizer=tokenizer, data_dir=None,
                                     cache_dir=None, batch_size=3)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids"].shape[0] == 6 and batch["labels"].tolist() == [[1.0], [0.0]] * 3
    first = datamodule.raw_split("train")
    # rows 0 and 1 are one triple's (query, positive) and (query, negative), in the sampler's order
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in batch["input_ids"][:2]]
    triple = next(t for t in first if tokenizer.decode(tokenizer(t["query"], t["positive"])["input_ids"],
                                                       skip_special_tokens=True) == texts[0])
    assert texts[1] == tokenizer.decode(tokenizer(triple["query"], triple["negative"])["input_ids"], skip_special_tokens=True)


def test_labelled_pairs_train_as_they_are(tokenizer):
    """Labelled pairs {query, passage, label}: one row each, the label (graded ones too) as its target."""
    datamodule = RerankingDataModule(data_folder=str(BEIR), train_file=str(PAIRS_FILE), tokenizer=tokenizer,
                                     data_dir=None, cache_dir=None, batch_size=18)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids"].shape[0] == 18 and batch["labels"].shape == (18, 1)
    assert sorted(batch["labels"].flatten().tolist()) == [0.0] * 6 + [0.25] * 3 + [1.0] * 9
    raw = datamodule.raw_split("train")
    assert raw.column_names == ["query", "passage", "label"] and len(raw) == 18


def test_bad_labelled_pairs_are_refused_in_one_line(tmp_path):
    bad = tmp_path / "pairs.csv"
    bad.write_text("query,passage,label\nwhere,the nile,1\nwhy,beethoven,2\n")
    module = RerankingDataModule(data_folder=str(BEIR), train_file=str(bad), tokenizer=None, data_dir=None,
                                 cache_dir=None)
    with pytest.raises(GrainError, match=r"pairs.csv, row 2: label 2 is not a number in \[0, 1\]") as err:
        module.train_rows()
    assert "\n" not in str(err.value)
    cfg = compose_config(["task=reranking", "model=tiny", f"task.train_file={PAIRS_FILE}",
                          f"task.datamodule.data_folder={BEIR}", "distillation.score_loss=margin_mse"], tmp_path)
    with pytest.raises(GrainError, match="holds labelled pairs: use distillation.score_loss=mse"):
        validate_config(cfg)


def test_bm25_puts_the_matching_document_first():
    documents = ["the nile flows into the mediterranean sea", "beethoven wrote nine symphonies",
                 "the amazon river has the largest discharge"]
    ranked = bm25_candidates(["which sea does the nile flow into", "how many symphonies"], documents, top_k=2)
    assert [row[0] for row in ranked] == [0, 1] and all(len(row) == 2 for row in ranked)


def test_candidates_read_from_trec_runs_and_tsv(tmp_path):
    (tmp_path / "run.trec").write_text("q1 Q0 d2 1 9.5 bm25\nq1 Q0 d1 2 3.0 bm25\nq2 Q0 d3 1 1.0 bm25\n")
    assert read_candidates(tmp_path / "run.trec") == {"q1": ["d2", "d1"], "q2": ["d3"]}
    (tmp_path / "run.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t0.2\nq1\td2\t0.7\n")
    assert read_candidates(tmp_path / "run.tsv") == {"q1": ["d2", "d1"]}
    (tmp_path / "bad.tsv").write_text("query-id\tcorpus-id\nq1\n")
    with pytest.raises(GrainError, match="line 2: expected a TREC run line"):
        read_candidates(tmp_path / "bad.tsv")


@pytest.mark.parametrize("overrides,message", [
    ([f"task.train_file={BEIR / 'corpus.jsonl'}"], "no column 'query'"),
    (["task.train_file=null"], "no train data; give task.train_file"),
    (["distillation.score_loss=kd"], "scores pairs with one logit"),
    (["task.datamodule.candidates_file=/nowhere/run.trec"], "candidates_file=/nowhere/run.trec: no such file"),
])
def test_bad_reranking_settings_are_refused_in_one_line(overrides, message, tmp_path):
    cfg = compose_config(["task=reranking", "model=tiny", f"task.train_file={TRIPLES}",
                          f"task.datamodule.data_folder={BEIR}", *overrides], tmp_path)
    with pytest.raises(GrainError, match=message) as err:
        validate_config(cfg)
    assert "\n" not in str(err.value)


# Loads a compact reranker folder with sentence-transformers' CrossEncoder where grain cannot be imported,
# and writes its raw scores (the logit, no activation).
WITHOUT_GRAIN = HIDE_GRAIN + textwrap.dedent("""
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(sys.argv[1], trust_remote_code=True, device="cpu")
    scores = model.predict(json.loads(sys.argv[2]), activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    torch.save(scores, sys.argv[3])
""")
PAIRS = [["Where does the Nile flow into?", "The Nile flows into the Mediterranean Sea."],
         ["How many symphonies did Beethoven write?", "The Amazon river is the largest by discharge."]]


def test_readme_reranking_command_saves_a_cross_encoder(tmp_path):
    """The README's task=reranking command (model=tiny, a few steps) on the BEIR fixture with BM25
    candidates: the teacher fine-tunes on the triples, the student distils its scores, the metrics are
    reranking's, and the compact folder loads with CrossEncoder(dir) where grain is not installed, its
    scores equal to grain's compact model's logits (1e-5), which equal the masked student's."""
    summary, run_dir = readme_tiny_run("Prune a reranker", "task.train_file=tests/fixtures/rerank/train.jsonl", tmp_path)
    assert summary["metric_name"] == "mrr@10"
    for section in ("teacher", "student", "compact"):
        assert set(summary[section]["metrics"]) == {"validation/ndcg@10", "validation/mrr@10"}
    assert summary["compact"]["max_abs_logit_diff_vs_masked"] < 1e-5
    folder = run_dir / "compact"
    run_without_grain(WITHOUT_GRAIN, str(folder), json.dumps(PAIRS), str(tmp_path / "ce.pt"), tmp_path=tmp_path)
    theirs = torch.load(tmp_path / "ce.pt", weights_only=True)
    compact = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = CrossEncoder(str(folder), device="cpu").tokenizer  # grain imported: no remote code needed
    batch = tokenizer([p[0] for p in PAIRS], [p[1] for p in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = compact(**batch).logits.reshape(-1)
    torch.testing.assert_close(theirs.reshape(-1), ours, atol=1e-5, rtol=0)


def test_readme_reranking_command_on_labelled_pairs(tmp_path):
    """The README's task=reranking command on labelled pairs (model=tiny, a few steps): the teacher
    fine-tunes on the labels, the student distils its scores, and the run completes exactly."""
    summary, _ = readme_tiny_run("Prune a reranker", "task.train_file=tests/fixtures/rerank/train_pairs.csv", tmp_path)
    assert summary["status"] == "completed" and summary["metric_name"] == "mrr@10"
    assert summary["compact"]["max_abs_logit_diff_vs_masked"] < 1e-5

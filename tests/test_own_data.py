"""task=text_classification on the user's own files: every format reads the same examples and labels,
each data mistake is one line naming the file and the fix (before anything trains), and a tiny run
completes on the SST-2 fixture as CSV."""

from __future__ import annotations

import csv
import json

import datasets
import pytest
import torch

from grain.config import validate_config
from grain.errors import GrainError
from grain.stages.trainer import build_datamodule
from grain.tasks.classification.metrics import TextClassificationEvaluator
from grain.tasks.classification.own_data import sorted_labels
from tests.helpers.configs import compose_config
from tests.helpers.paths import FIXTURES, REPO
from tests.helpers.runs import readme_commands, run_grain

OWN = FIXTURES / "own_data"
TRAIN_CSV, DEV_CSV = OWN / "sst2_train.csv", OWN / "sst2_dev.csv"


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_format(rows, path):
    """The CSV's rows (label as int) in the format of path's extension."""
    typed = [{"sentence": r["sentence"], "label": int(r["label"])} for r in rows]
    suffix = path.suffix
    if suffix == ".csv":
        write_csv(path, ["sentence", "label"], [[r["sentence"], r["label"]] for r in typed])
    elif suffix == ".tsv":
        path.write_text("sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in typed))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in typed))
    elif suffix == ".json":
        path.write_text(json.dumps(typed))
    elif suffix == ".parquet":
        datasets.Dataset.from_list(typed).to_parquet(str(path))
    return path


def own_config(tmp_path, *overrides, train=TRAIN_CSV, dev=DEV_CSV):
    args = ["task=text_classification", "model=tiny"]
    if train is not None:
        args.append(f"task.train_file={train}")
    if dev is not None:
        args.append(f"task.validation_file={dev}")
    return compose_config([*args, *overrides], tmp_path)


def own_datamodule(cfg, tokenizer):
    return build_datamodule(cfg, tokenizer, batch_size=8, max_train_samples=cfg.task.max_train_samples)


def refused(cfg) -> str:
    """The one-line GrainError config validation gives."""
    with pytest.raises(GrainError) as info:
        validate_config(cfg)
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_each_format_reads_the_same_examples_and_labels(suffix, tokenizer, tmp_path):
    files = {split: write_format(read_rows(path), tmp_path / f"{split}{suffix}")
             for split, path in (("train", TRAIN_CSV), ("dev", DEV_CSV))}
    cfg = own_config(tmp_path, train=files["train"], dev=files["dev"])
    validate_config(cfg)
    dm = own_datamodule(cfg, tokenizer)
    assert dm.labels == ["0", "1"] and dm.num_labels == 2 and dm.eval_splits == ["validation"]
    for split, path in (("train", TRAIN_CSV), ("validation", DEV_CSV)):
        rows = read_rows(path)
        raw = dm.raw_split(split)
        assert raw["text_a"] == [r["sentence"] for r in rows]
        assert raw["label"] == [int(r["label"]) for r in rows]
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and batch["labels"].dtype == torch.long


def test_same_examples_and_label_ids_as_task_sst2(tokenizer, tmp_path):
    """The CSV made from the SST-2 fixture gives task=sst2's rows, label ids and token ids."""
    own = own_datamodule(own_config(tmp_path), tokenizer)
    sst2 = own_datamodule(compose_config(["task=sst2", "model=tiny"], tmp_path), tokenizer)
    for split in ("train", "validation"):
        assert own.raw_split(split)["label"] == sst2.raw_split(split)["label"]
        assert [t.strip() for t in sst2.raw_split(split)["text_a"]] == own.raw_split(split)["text_a"]
        assert own.dataset(split)["input_ids"] == sst2.dataset(split)["input_ids"]


def test_labels_sorted_given_and_subsets(tokenizer, tmp_path):
    assert sorted_labels({"10", "2", "1"}) == ["1", "2", "10"]
    assert sorted_labels({"pos", "neg", "neutral"}) == ["neg", "neutral", "pos"]
    rows = [["good", "pos"], ["bad", "neg"], ["fine", "neutral"], ["great", "pos"]]
    train = write_csv(tmp_path / "train.csv", ["text", "sentiment"], rows)
    dev = write_csv(tmp_path / "dev.csv", ["text", "sentiment"], rows[:2])
    base = ["task.text_columns=[text]", "task.label_column=sentiment"]
    dm = own_datamodule(own_config(tmp_path, *base, train=train, dev=dev), tokenizer)
    assert dm.labels == ["neg", "neutral", "pos"] and dm.raw_split("train")["label"] == [2, 0, 1, 2]
    given = own_config(tmp_path, *base, "task.labels=[pos,neg,neutral]", train=train, dev=dev)
    validate_config(given)
    dm = own_datamodule(given, tokenizer)
    assert dm.labels == ["pos", "neg", "neutral"] and dm.raw_split("validation")["label"] == [0, 1]
    # a subset of the training rows keeps the label set of the whole split
    small = own_datamodule(own_config(tmp_path, *base, "task.max_train_samples=1", train=train, dev=dev), tokenizer)
    assert len(small.raw_split("train")) == 1 and small.labels == ["neg", "neutral", "pos"]


def test_sentence_pairs_and_a_test_split(tokenizer, tmp_path):
    rows = [["a man sleeps", "a man is awake", "contradiction"], ["a dog runs", "an animal moves", "entailment"],
            ["a cat sits", "the cat is black", "neutral"]]
    train = write_csv(tmp_path / "train.csv", ["premise", "hypothesis", "gold"], rows)
    cfg = own_config(tmp_path, "task.text_columns=[premise,hypothesis]", "task.label_column=gold",
                     f"task.test_file={train}", "task.metric=f1", train=train, dev=train)
    validate_config(cfg)
    dm = own_datamodule(cfg, tokenizer)
    assert dm.eval_splits == ["validation", "test"]
    dm.setup("fit")
    features = dm.dataset("validation")[0]
    assert features["token_type_ids"].count(1) > 0  # the hypothesis is the second segment
    evaluator = dm.make_evaluator("validation")
    batch = next(iter(dm.eval_dataloader("validation")))
    logits = torch.nn.functional.one_hot(batch["labels"], 3).float()
    evaluator.update(batch, type("Out", (), {"logits": logits})())
    assert evaluator.compute() == {"accuracy": 1.0, "f1": 1.0, "f1_macro": 1.0, "matthews": 1.0}


def test_regression_reads_numbers_and_reports_correlations(tokenizer, tmp_path):
    rows = [["a", "b", "0.5"], ["c", "d", "4.0"], ["e", "f", "2.25"], ["g", "h", "3"]]
    train = write_csv(tmp_path / "sts.csv", ["s1", "s2", "score"], rows)
    base = ["task.text_columns=[s1,s2]", "task.label_column=score", "task.num_labels=1", "task.metric=pearson"]
    message = refused(own_config(tmp_path, *base, "distillation.score_loss=kd", train=train, dev=train))
    assert "constant for one output" in message and "distillation.score_loss=mse" in message
    cfg = own_config(tmp_path, *base, train=train, dev=train)  # distilled on the teacher's scores (mse), no labels
    validate_config(cfg)
    dm = own_datamodule(cfg, tokenizer)
    assert dm.labels is None and dm.num_labels == 1
    assert dm.raw_split("train")["label"] == [0.5, 4.0, 2.25, 3.0]
    dm.setup("fit")
    batch = next(iter(dm.eval_dataloader("validation")))
    assert batch["labels"].dtype == torch.float32
    evaluator = TextClassificationEvaluator(1)
    evaluator.update(batch, type("Out", (), {"logits": batch["labels"][:, None] * 2})())
    result = evaluator.compute()
    assert result["pearson"] == pytest.approx(1.0) and result["spearman"] == pytest.approx(1.0)
    assert "accuracy" in refused(own_config(tmp_path, *base[:-1], "task.metric=accuracy", train=train, dev=train))


# --- one line per mistake, naming the file and the fix ----------------------------------------------


def test_missing_file_names_it_and_what_the_folder_has(tmp_path):
    message = refused(own_config(tmp_path, dev=OWN / "sst2_dvE.csv"))
    assert "task.validation_file=" in message and "sst2_dvE.csv: no such file" in message
    assert "sst2_dev.csv" in message  # what is there
    message = refused(own_config(tmp_path, train=None))
    assert "no train data" in message and "task.train_file=" in message


def test_unknown_extension_and_unreadable_file(tmp_path):
    odd = tmp_path / "train.xlsx"
    odd.write_text("x")
    assert "unknown format '.xlsx'" in refused(own_config(tmp_path, train=odd))
    broken = tmp_path / "train.jsonl"
    broken.write_text('{"sentence": "good", "label": 1}\nnot json at all\n')
    message = refused(own_config(tmp_path, train=broken))
    assert str(broken) in message and "cannot be read as jsonl" in message


def test_missing_column_names_the_columns_present(tmp_path):
    message = refused(own_config(tmp_path, "task.text_columns=[text]"))
    assert str(TRAIN_CSV) in message and "no column 'text'" in message
    assert "['sentence', 'label']" in message and "task.text_columns[0]" in message
    message = refused(own_config(tmp_path, "task.label_column=sentiment"))
    assert "no column 'sentiment'" in message and "task.label_column" in message


def test_empty_split(tmp_path):
    empty = write_csv(tmp_path / "dev.csv", ["sentence", "label"], [])
    message = refused(own_config(tmp_path, dev=empty))
    assert str(empty) in message and "no rows" in message


def test_dev_label_the_training_split_lacks(tmp_path):
    dev = write_csv(tmp_path / "dev.csv", ["sentence", "label"], [["good", "1"], ["meh", "2"]])
    message = refused(own_config(tmp_path, dev=dev))
    assert str(dev) in message and "row 2 has label '2'" in message
    assert str(TRAIN_CSV) in message and "task.labels=" in message
    # listing the labels accepts it; a label outside the list is refused naming task.labels
    validate_config(own_config(tmp_path, "task.labels=[0,1,2]", dev=dev))
    assert "task.labels" in refused(own_config(tmp_path, "task.labels=[0,1]", dev=dev))


def test_a_row_without_text_is_refused_naming_file_and_row(tmp_path):
    """An empty text cell was trained on as an empty sentence; refused, naming the file, row and column."""
    train = write_csv(tmp_path / "train.csv", ["sentence", "label"], [["good", "1"], ["", "0"], ["bad", "0"]])
    message = refused(own_config(tmp_path, train=train))
    assert message == f"{train}: row 2 has no text in column 'sentence' (task.text_columns[0]); fill it in or drop the row"


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_file_in_another_encoding_names_it(tmp_path, suffix):
    """A cp1252 file (an accented word in it) got a message about its header, or a decode traceback; named
    instead, with the encoding it likely has and how to convert it."""
    train = tmp_path / f"train{suffix}"
    sep = "," if suffix == ".csv" else "\t"
    train.write_bytes(f"sentence{sep}label\nun film très réussi{sep}1\nle pire film de l'année{sep}0\n".encode("cp1252"))
    message = refused(own_config(tmp_path, train=train))
    assert message.startswith(f"{train} is not UTF-8 text (byte 0xe8 at offset") and "iconv -f" in message


def test_unlabelled_row_and_single_label(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["sentence", "label"], [["good", "1"], ["bad", ""]])
    assert "row 2 has no label" in refused(own_config(tmp_path, train=train))
    one = write_csv(tmp_path / "one.csv", ["sentence", "label"], [["good", "1"], ["fine", "1"]])
    assert "at least two labels" in refused(own_config(tmp_path, train=one, dev=one))


@pytest.mark.slow  # the message: test_missing_column_names_the_columns_present; the entry's one line: test_run
def test_refused_on_the_command_line_in_one_line(tmp_path):
    result = run_grain(["task=text_classification", f"task.train_file={TRAIN_CSV}", f"task.validation_file={DEV_CSV}",
                        "task.text_columns=[text]", "model=tiny"], tmp_path, data_dir=None, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no column 'text'" in lines[0], lines
    assert not list(tmp_path.glob("**/summary.json"))


def test_a_dataset_directory_through_dataset_name_keeps_its_class_names(tokenizer, tmp_path):
    """task.dataset_name goes through datasets.load_dataset as a hub name does: here a local folder of
    parquet files whose label column is a ClassLabel (its names and order are the labels)."""
    folder = tmp_path / "mydata"
    folder.mkdir()
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["positive", "negative"])})
    for split, path in (("train", TRAIN_CSV), ("validation", DEV_CSV)):
        rows = read_rows(path)
        datasets.Dataset.from_dict(
            {"text": [r["sentence"] for r in rows], "label": [1 - int(r["label"]) for r in rows]}, features=features,
        ).to_parquet(str(folder / f"{split}.parquet"))
    cfg = compose_config(["task=text_classification", "model=tiny", f"task.dataset_name={folder}",
                          "task.text_columns=[text]"], tmp_path)
    validate_config(cfg)
    dm = own_datamodule(cfg, tokenizer)
    assert dm.labels == ["positive", "negative"]
    assert dm.raw_split("validation")["label"] == [1 - int(r["label"]) for r in read_rows(DEV_CSV)]
    assert "no split 'dev'" in refused(compose_config(
        ["task=text_classification", "model=tiny", f"task.dataset_name={folder}", "task.text_columns=[text]",
         "task.validation_split=dev"], tmp_path))


# --- the README's section, run as written -----------------------------------------------------------


def run_in_repo(args, tmp_path):
    """grain.run from the repository root (the README's relative paths), its outputs and caches in tmp_path,
    the config's own data directory."""
    return run_grain(args, tmp_path, data_dir=None, cwd=REPO)


@pytest.mark.slow  # two runs (~30 s); by default the own-data readers and refusals are tested in-process above
def test_readme_own_data_commands_run_as_written(tmp_path):
    commands = readme_commands("Prune your own model on your own data")
    assert len(commands) == 2 and "task=text_classification" in commands[0]
    assert any(arg.startswith("teacher.path=") for arg in commands[1])
    cheap = ["model=tiny", "trainer.max_steps=3", "logger=csv"]
    first = run_in_repo([*commands[0], *cheap], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    [path] = list(tmp_path.glob("outputs/text_classification/tiny/*/*/summary.json"))
    summary = json.loads(path.read_text())
    assert summary["status"] == "completed" and summary["metric_name"] == "accuracy"
    for section in ("teacher", "student", "compact"):
        assert 0.0 <= summary[section]["metric"] <= 1.0
        assert set(summary[section]["metrics"]) >= {"validation/accuracy", "validation/f1", "validation/matthews"}
    assert summary["compact"]["max_abs_logit_diff_vs_masked"] < 1e-4
    compact = json.loads((path.parent / "compact" / "config.json").read_text())
    assert compact["id2label"] == {"0": "0", "1": "1"}

    # your own fine-tuned model: the teacher the first run fine-tuned stands for it
    teacher = summary["teacher"]["path"]
    args = [f"{arg.split('=', 1)[0]}={teacher}" if "=/my/" in arg else arg for arg in commands[1]]
    second = run_in_repo([*args, *cheap, "stages=[teacher,prune]"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    [own] = [p for p in tmp_path.glob("outputs/text_classification/tiny/*/*/summary.json") if p != path]
    result = json.loads(own.read_text())
    assert result["status"] == "completed" and result["teacher"]["path"] == teacher
    assert result["teacher"]["metric"] == summary["teacher"]["metric"]


@pytest.mark.slow  # two runs (~25 s); test_same_examples_and_label_ids_as_task_sst2 checks the data by default
def test_the_readme_own_data_command_fine_tunes_the_teacher_task_sst2_does(tmp_path):
    """task=sst2 on the same sentences (the TSV fixture) with the same settings: the same teacher."""
    cheap = ["model=tiny", "trainer.max_steps=3", "logger=csv", "stages=[teacher]"]
    own = run_in_repo([*readme_commands("Prune your own model on your own data")[0], *cheap], tmp_path)
    assert own.returncode == 0, own.stderr[-3000:]
    sst2 = run_in_repo(["task=sst2", f"paths.data_dir={FIXTURES}", *cheap], tmp_path)
    assert sst2.returncode == 0, sst2.stderr[-3000:]
    [own_path] = list(tmp_path.glob("outputs/text_classification/tiny/*/*/summary.json"))
    [sst2_path] = list(tmp_path.glob("outputs/sst2/tiny/*/*/summary.json"))
    teachers = [json.loads(path.read_text())["teacher"]["metrics"] for path in (own_path, sst2_path)]
    assert teachers[0]["validation/accuracy"] == teachers[1]["validation/accuracy"]


# --- token classification and question answering on the user's files --------------------------------

CONLL_TRAIN, CONLL_DEV = FIXTURES / "conll2003" / "train.txt", FIXTURES / "conll2003" / "valid.txt"
SQUAD_DEV = FIXTURES / "squad" / "v1.1" / "dev.json"


def conll_sentences(path):
    from grain.tasks.token_classification.own_data import read_column_file

    table = read_column_file(path)
    return table["tokens"], table["tags"]


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".parquet"])
def test_token_classification_formats_read_the_same_sentences(suffix, tokenizer, tmp_path):
    files = {}
    for split, path in (("train", CONLL_TRAIN), ("dev", CONLL_DEV)):
        tokens, tags = conll_sentences(path)
        target = tmp_path / f"{split}{suffix}"
        if suffix == ".txt":
            target.write_text(path.read_text())
        elif suffix == ".jsonl":
            target.write_text("".join(json.dumps({"tokens": t, "ner_tags": g}) + "\n" for t, g in zip(tokens, tags)))
        else:
            datasets.Dataset.from_dict({"tokens": tokens, "ner_tags": tags}).to_parquet(str(target))
        files[split] = target
    cfg = compose_config(["task=token_classification", "model=tiny", f"task.train_file={files['train']}",
                          f"task.validation_file={files['dev']}"], tmp_path)
    validate_config(cfg)
    dm = own_datamodule(cfg, tokenizer)
    assert dm.labels == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    tokens, tags = conll_sentences(CONLL_DEV)
    raw = dm.raw_split("validation")
    assert raw["tokens"] == tokens and [[dm.labels[i] for i in row] for row in raw["ner_tags"]] == tags
    dm.setup("fit")
    assert next(iter(dm.eval_dataloader("validation")))["labels"].dim() == 2
    assert type(dm.make_evaluator("validation")).__name__ == "NEREvaluator"


def test_token_classification_mistakes_are_one_line(tmp_path):
    def config(train, dev=CONLL_DEV, *extra):
        return compose_config(["task=token_classification", "model=tiny", f"task.train_file={train}",
                               f"task.validation_file={dev}", *extra], tmp_path)

    bioes = tmp_path / "bioes.txt"
    bioes.write_text("EU S-ORG\nrejects O\n")
    message = refused(config(bioes))
    assert str(bioes) in message and "'S-ORG', not IOB2" in message
    dev = tmp_path / "dev.txt"
    dev.write_text("Paris B-CITY\n")
    message = refused(config(CONLL_TRAIN, dev))
    assert str(dev) in message and "'B-CITY'" in message and "task.labels" in message
    lengths = tmp_path / "dev.jsonl"
    lengths.write_text(json.dumps({"tokens": ["a", "b"], "ner_tags": ["O"]}) + "\n")
    assert "2 tokens and 1 tags" in refused(config(CONLL_TRAIN, lengths))
    assert "no column 'words'" in refused(config(CONLL_TRAIN, lengths, "task.tokens_column=words"))
    ids = tmp_path / "ids.jsonl"
    ids.write_text(json.dumps({"tokens": ["EU", "rejects"], "ner_tags": [3, 0]}) + "\n")
    assert "task.labels=[O,B-PER" in refused(config(ids, ids))
    named = config(ids, ids, "task.labels=[O,B-PER,I-PER,B-ORG,I-ORG]")
    validate_config(named)
    assert "no such file" in refused(config(tmp_path / "nope.txt"))


def squad_json(path, articles):
    path.write_text(json.dumps({"version": "1.1", "data": articles}))
    return path


def test_question_answering_reads_squad_json_and_refuses_v2_and_bad_offsets(tokenizer, tmp_path):
    cfg = compose_config(["task=question_answering", "model=tiny", f"task.train_file={SQUAD_DEV}",
                          f"task.validation_file={SQUAD_DEV}", "task.datamodule.max_length=64",
                          "task.datamodule.doc_stride=16"], tmp_path)
    validate_config(cfg)
    dm = own_datamodule(cfg, tokenizer)
    from grain.tasks.question_answering.squad import read_squad_json

    assert dm.raw_split("validation")["id"] == read_squad_json(SQUAD_DEV)["id"]
    dm.setup("fit")
    assert type(dm.make_evaluator("validation")).__name__ == "QAEvaluator"

    def config(dev):
        return compose_config(["task=question_answering", "model=tiny", f"task.train_file={SQUAD_DEV}",
                               f"task.validation_file={dev}"], tmp_path)

    paragraph = {"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "q2", "question": "Who won?", "answers": [], "is_impossible": True},
    ]}
    v2 = squad_json(tmp_path / "v2.json", [{"title": "t", "paragraphs": [paragraph]}])
    message = refused(config(v2))
    assert str(v2) in message and "1 of 2 questions have no answer" in message
    paragraph["qas"] = [{"id": "q1", "question": "Where?", "answers": [{"text": "France", "answer_start": 3}]}]
    shifted = squad_json(tmp_path / "shifted.json", [{"title": "t", "paragraphs": [paragraph]}])
    assert "'France' is not at answer_start=3" in refused(config(shifted))
    assert "no rows" in refused(config(squad_json(tmp_path / "empty.json", [])))
    del paragraph["context"]
    assert "lacks 'context'" in refused(config(squad_json(tmp_path / "nocontext.json", [{"paragraphs": [paragraph]}])))
    assert "SQuAD-format .json" in refused(config(TRAIN_CSV))


@pytest.mark.slow  # three whole runs (~55 s); the README test runs text classification end to end by default
def test_tiny_runs_of_token_classification_question_answering_and_regression(tmp_path):
    scores = [[a, b, str(n % 5 + 0.5)] for n, (a, b) in enumerate(
        (r["sentence"], r["sentence"][::-1]) for r in read_rows(TRAIN_CSV)[:24])]
    sts = write_csv(tmp_path / "sts.csv", ["s1", "s2", "score"], scores)
    for task, extra, metric in (
        ("token_classification", [f"task.train_file={CONLL_TRAIN}", f"task.validation_file={CONLL_DEV}"], "f1"),
        ("question_answering", [f"task.train_file={SQUAD_DEV}", f"task.validation_file={SQUAD_DEV}",
                                "task.datamodule.max_length=64", "task.datamodule.doc_stride=16"], "f1"),
        ("text_classification", [f"task.train_file={sts}", f"task.validation_file={sts}", "task.text_columns=[s1,s2]",
                                 "task.label_column=score", "task.num_labels=1", "task.metric=pearson",
                                 "distillation.hard_label_weight=1.0"], "pearson"),
    ):
        result = run_in_repo([f"task={task}", *extra, "model=tiny", "trainer.max_steps=3", "logger=none"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        [path] = list(tmp_path.glob(f"outputs/{task}/tiny/*/*/summary.json"))
        summary = json.loads(path.read_text())
        assert summary["status"] == "completed" and summary["metric_name"] == metric
        for section in ("teacher", "student", "compact"):
            assert -1.0 <= summary[section]["metric"] <= 1.0
        assert summary["compact"]["max_abs_logit_diff_vs_masked"] < 1e-4
    assert set(summary["teacher"]["metrics"]) == {"validation/pearson", "validation/spearman", "validation/mse"}

"""GLUE loading from fixture files and from the offline data directory; clear errors."""

import os
import shutil

import pytest

from grain.errors import GrainError
from grain.stages.trainer import build_datamodule
from grain.tasks.classification.glue import read_tsv
from tests.helpers.configs import compose_config
from tests.helpers.paths import FIXTURES, SHARED_DATA


def glue_datamodule(task, tokenizer, tmp_path, data_dir=FIXTURES, **overrides):
    cfg = compose_config([f"task={task}", "model=tiny"], tmp_path)
    cfg.paths.data_dir = str(data_dir)
    for key, value in overrides.items():
        cfg.task[key] = value
    return build_datamodule(cfg, tokenizer, batch_size=8, max_train_samples=cfg.task.max_train_samples)


def test_sst2_fixture_loads_tokenizes_and_batches(tokenizer, tmp_path):
    dm = glue_datamodule("sst2", tokenizer, tmp_path)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 64 and len(dm.dataset("validation")) == 24
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8
    assert set(batch["labels"].tolist()) <= {0, 1}
    # dynamic padding: each batch is as long as its longest sentence, not max_length
    assert batch["input_ids"].shape[1] < dm.max_length
    assert (tmp_path / "cache" / "tokenized").exists()


def test_seeded_subset_is_reproducible(tokenizer, tmp_path):
    first = glue_datamodule("sst2", tokenizer, tmp_path, max_train_samples=10).raw_split("train")
    second = glue_datamodule("sst2", tokenizer, tmp_path, max_train_samples=10).raw_split("train")
    assert len(first) == 10 and first["text_a"] == second["text_a"]


def test_mnli_labels_and_missing_mismatched_split(tokenizer, tmp_path):
    dm = glue_datamodule("mnli", tokenizer, tmp_path)
    assert dm.eval_splits == ["validation"]  # no dev_mismatched.tsv in the fixtures
    dev = dm.raw_split("validation")
    assert dev["label"][:3] == [0, 1, 2]
    assert dev["text_b"][0] == "a cat is sitting ."


def test_unknown_label_names_file_line_and_label(tmp_path):
    bad = tmp_path / "dev.tsv"
    bad.write_text("sentence\tlabel\ngood film \t1\nbad film \tpositive\n")
    with pytest.raises(GrainError, match=r"dev.tsv, line 3: unknown label 'positive'.*\['0', '1'\]"):
        read_tsv(bad, ["sentence", None, "label"], ["0", "1"])


def test_a_line_without_text_and_a_file_in_another_encoding(tmp_path):
    empty = tmp_path / "train.tsv"
    empty.write_text("sentence\tlabel\ngood film \t1\n\t0\n")
    with pytest.raises(GrainError, match=r"train.tsv, line 3: no text in column 'sentence'; fill it in or drop the line"):
        read_tsv(empty, ["sentence", None, "label"], ["0", "1"])
    latin = tmp_path / "dev.tsv"
    latin.write_bytes("sentence\tlabel\nun film très réussi\t1\n".encode("latin-1"))
    with pytest.raises(GrainError, match=r"dev.tsv is not UTF-8 text \(byte 0xe8 at offset \d+; it looks like"):
        read_tsv(latin, ["sentence", None, "label"], ["0", "1"])


def test_missing_train_split_says_what_to_do(tokenizer, tmp_path):
    dm = glue_datamodule("qnli", tokenizer, tmp_path)
    with pytest.raises(GrainError, match=r"no 'train' split at .*QNLI/train.tsv.*unset GRAIN_DATA_DIR"):
        dm.raw_split("train")


def test_source_signature_follows_content_not_copy_time(tokenizer, tmp_path):
    """A fresh copy of the same data keeps the caches (teachers, tokenized splits); an edit does not."""
    copy = tmp_path / "copy"
    shutil.copytree(FIXTURES, copy)
    os.utime(copy / "glue" / "SST-2" / "train.tsv", (0, 0))
    original = glue_datamodule("sst2", tokenizer, tmp_path).source_signature("train")
    copied = glue_datamodule("sst2", tokenizer, tmp_path, data_dir=copy)
    assert copied.source_signature("train") == original
    with open(copy / "glue" / "SST-2" / "train.tsv", "a") as handle:
        handle.write("one more line .\t1\n")
    assert copied.source_signature("train") != original


@pytest.mark.skipif(not (SHARED_DATA / "glue").exists(), reason="offline data dir (../shared/data) not present")
def test_shared_data_sst2_and_mnli(tokenizer, tmp_path):
    dm = glue_datamodule("sst2", tokenizer, tmp_path, data_dir=SHARED_DATA)
    dev = dm.raw_split("validation")
    assert len(dev) == 872 and sum(dev["label"]) == 444
    mnli = glue_datamodule("mnli", tokenizer, tmp_path, data_dir=SHARED_DATA)
    assert len(mnli.raw_split("validation")) == 9815
    with pytest.raises(GrainError, match="MNLI/train.tsv"):
        mnli.raw_split("train")

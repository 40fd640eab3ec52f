"""CoNLL-2003: reading, first-sub-token label alignment, seqeval metrics, clear errors."""

from types import SimpleNamespace

import pytest
import torch

from grain.data.conll import CONLL_LABELS, first_subtoken_labels, read_conll
from grain.errors import GrainError
from grain.metrics.ner import NEREvaluator
from grain.training import build_datamodule
from tests.conftest import FIXTURES, SHARED_DATA, compose_config


def test_reads_sentences_and_skips_docstart():
    train = read_conll(FIXTURES / "conll2003/train.txt", CONLL_LABELS)
    assert len(train) == 4
    assert train[1]["tokens"] == ["Peter", "Blackburn"]
    assert [CONLL_LABELS[t] for t in train[1]["ner_tags"]] == ["B-PER", "I-PER"]


def test_first_subtoken_alignment(tokenizer, tmp_path):
    assert first_subtoken_labels([None, 0, 0, 1, None], [3, 0]) == [-100, 3, -100, 0, -100]
    cfg = compose_config(["task=conll2003", "model=tiny"], tmp_path)
    dm = build_datamodule(cfg, tokenizer, batch_size=2, max_train_samples=None)
    feature = dm.dataset("train")[0]  # "EU rejects German call ..." : one label per word
    labels = [l for l in feature["labels"] if l != -100]
    assert [CONLL_LABELS[l] for l in labels] == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].shape == batch["input_ids"].shape


def test_seqeval_metrics_on_known_predictions():
    evaluator = NEREvaluator(CONLL_LABELS)
    gold = torch.tensor([[-100, 1, 2, 0, 5, -100]])  # B-PER I-PER O B-LOC
    predicted = torch.tensor([[0, 1, 2, 0, 0, 0]])   # finds the person, misses the location
    logits = torch.nn.functional.one_hot(predicted, len(CONLL_LABELS)).float()
    evaluator.update({"labels": gold}, SimpleNamespace(logits=logits))
    scores = evaluator.compute()
    assert scores["precision"] == 1.0 and scores["recall"] == 0.5
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == pytest.approx(3 / 4)


def test_unknown_tag_names_file_line_and_tag(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP I-XYZ\n")
    with pytest.raises(GrainError, match=r"bad.txt, line 2: unknown NER tag 'I-XYZ'"):
        read_conll(bad, CONLL_LABELS)


@pytest.mark.skipif(not (SHARED_DATA / "conll2003").exists(), reason="offline data dir (../shared/data) not present")
def test_shared_conll_validation_sentences():
    assert len(read_conll(SHARED_DATA / "conll2003/valid.txt", CONLL_LABELS)) == 3250

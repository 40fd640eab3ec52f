"""CoNLL-2003: reading, first-sub-token label alignment, padded batches, seqeval metrics, clear errors."""

from types import SimpleNamespace

import pytest
import torch

from grain.errors import GrainError
from grain.stages.trainer import build_datamodule
from grain.tasks.token_classification.conll import CONLL_LABELS, ConllDataModule, read_conll
from grain.tasks.token_classification.metrics import NEREvaluator
from grain.tasks.token_classification.task import TokenClassificationTask, first_subtoken_labels
from tests.helpers.configs import compose_config
from tests.helpers.paths import FIXTURES, SHARED_DATA

TAG = {name: i for i, name in enumerate(CONLL_LABELS)}


def conll_datamodule(tokenizer, tmp_path, data_dir=FIXTURES) -> ConllDataModule:
    cfg = compose_config(["task=conll2003", "model=tiny"], tmp_path)
    cfg.paths.data_dir = str(data_dir)
    return build_datamodule(cfg, tokenizer, batch_size=2, max_train_samples=None)


def one_hot_logits(predicted: list[list[str]]) -> SimpleNamespace:
    """Model output whose argmax is the given tags: logits [batch, seq, num_labels]."""
    ids = torch.tensor([[TAG[t] for t in row] for row in predicted])
    return SimpleNamespace(logits=torch.nn.functional.one_hot(ids, len(CONLL_LABELS)).float())


def test_labels_are_the_hub_order():
    assert CONLL_LABELS == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def test_reads_sentences_and_skips_docstart():
    train = read_conll(FIXTURES / "conll2003/train.txt")
    assert len(train) == 4  # two documents; -DOCSTART- lines are not sentences
    assert train[1]["tokens"] == ["Peter", "Blackburn"]
    assert [CONLL_LABELS[t] for t in train[1]["ner_tags"]] == ["B-PER", "I-PER"]
    assert train[3]["tokens"][:3] == ["The", "European", "Commission"]
    assert all("-DOCSTART-" not in row for row in train["tokens"])


def test_first_subtoken_alignment(tokenizer, tmp_path):
    assert first_subtoken_labels([None, 0, 0, 1, None], [3, 0]) == [-100, 3, -100, 0, -100]
    dm = conll_datamodule(tokenizer, tmp_path)
    assert dm.num_labels == 9 and isinstance(dm, TokenClassificationTask)
    feature = dm.dataset("train")[2]  # BRUSSELS 1996-08-22: the date is 5 word pieces
    tokens = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert tokens == ["[CLS]", "brussels", "1996", "-", "08", "-", "22", "[SEP]"]
    assert feature["labels"] == [-100, TAG["B-LOC"], TAG["O"], -100, -100, -100, -100, -100]
    # every sentence keeps exactly one label per word, in order
    raw = dm.raw_split("train")
    for row, feature in zip(raw, dm.dataset("train")):
        assert [label for label in feature["labels"] if label != -100] == row["ner_tags"]


def test_batches_pad_labels_with_ignore_index(tokenizer, tmp_path):
    dm = conll_datamodule(tokenizer, tmp_path)
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].shape == batch["input_ids"].shape
    padding = batch["attention_mask"] == 0
    assert padding.any() and (batch["labels"][padding] == -100).all()
    eval_batch = next(iter(dm.eval_dataloader("validation")))
    assert eval_batch["labels"].shape == eval_batch["input_ids"].shape


def test_seqeval_metrics_on_known_predictions():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O", "O"]]
    # finds the person, misses the location, and starts the organisation with I- (no entity under strict IOB2)
    predicted = [["B-PER", "I-PER", "O", "O"], ["I-ORG", "I-ORG", "O", "O"]]
    # rows as a batch: [CLS] word0 word0-second-piece word1 word2 word3 [SEP]; only the -100-free positions
    # count, so the B-MISC predicted on [CLS], [SEP] and the second piece must not become entities
    labels = torch.tensor([[-100, TAG[g[0]], -100, TAG[g[1]], TAG[g[2]], TAG[g[3]], -100] for g in gold])
    outputs = one_hot_logits([["B-MISC", p[0], "B-MISC", p[1], p[2], p[3], "B-MISC"] for p in predicted])
    evaluator = NEREvaluator(CONLL_LABELS)
    evaluator.update({"labels": labels}, outputs)
    scores = evaluator.compute()
    # 3 gold entities, 1 predicted, 1 correct
    assert scores["precision"] == pytest.approx(1.0)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(0.5)  # 2 * 1 * (1/3) / (1 + 1/3)
    assert scores["accuracy"] == pytest.approx(6 / 8)  # wrong: the missed B-LOC and the I-ORG for B-ORG
    perfect = NEREvaluator(CONLL_LABELS)
    perfect.update({"labels": labels}, one_hot_logits([["O", g[0], "O", g[1], g[2], g[3], "O"] for g in gold]))
    assert perfect.compute() == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "accuracy": 1.0}


def test_unknown_tag_names_file_line_and_tag(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP I-XYZ\n")
    with pytest.raises(GrainError, match=r"bad.txt, line 4: unknown NER tag 'I-XYZ'.*IOB2"):
        read_conll(bad)


def test_missing_file_names_the_path(tokenizer, tmp_path):
    dm = conll_datamodule(tokenizer, tmp_path, data_dir=tmp_path / "nowhere")
    with pytest.raises(GrainError, match=r"nowhere/conll2003/train.txt.*unset GRAIN_DATA_DIR"):
        dm.raw_split("train")


@pytest.mark.skipif(not (SHARED_DATA / "conll2003").exists(), reason="offline data dir (../shared/data) not present")
def test_shared_conll_sentences_and_entities():
    valid = read_conll(SHARED_DATA / "conll2003/valid.txt")
    assert len(valid) == 3250 and sum(len(tokens) for tokens in valid["tokens"]) == 51362
    begins = [CONLL_LABELS[t] for tags in valid["ner_tags"] for t in tags if CONLL_LABELS[t].startswith("B-")]
    assert {name: begins.count(f"B-{name}") for name in ("PER", "LOC", "ORG", "MISC")} == {
        "PER": 1842, "LOC": 1837, "ORG": 1341, "MISC": 922,
    }

"""SQuAD: reading, windows and answer positions, the offline split, post-processing, EM/F1, errors."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grain.errors import GrainError
from grain.stages.trainer import build_datamodule
from grain.tasks.question_answering.metrics import QAEvaluator, postprocess_qa_predictions, squad_scores
from grain.tasks.question_answering.squad import read_squad_json, split_by_article
from tests.helpers.configs import compose_config
from tests.helpers.paths import FIXTURES, SHARED_DATA

FIXTURE_DEV = FIXTURES / "squad/v1.1/dev.json"


def squad_datamodule(tokenizer, tmp_path, task="squad_offline", data_dir=FIXTURES, **datamodule):
    cfg = compose_config([f"task={task}", "model=tiny"], tmp_path)
    cfg.paths.data_dir = str(data_dir)
    for key, value in datamodule.items():
        cfg.task.datamodule[key] = value
    return build_datamodule(cfg, tokenizer, batch_size=4, max_train_samples=None)


def squeeze(text: str) -> str:
    """Lower-cased text without spaces: decoding re-spaces punctuation ("6 , 650" for "6,650")."""
    return "".join(text.lower().split())


def gold_logits(batch, raw) -> SimpleNamespace:
    """Start/end logits [batch, seq] that peak on the tokens of each window's first gold answer."""
    start = torch.full(batch["input_ids"].shape, -10.0)
    end = torch.full(batch["input_ids"].shape, -10.0)
    for row, (example, offsets) in enumerate(zip(batch["example_index"], batch["offset_mapping"])):
        answers = raw[example]["answers"]
        first, last = answers["answer_start"][0], answers["answer_start"][0] + len(answers["text"][0])
        for j, span in enumerate(offsets):
            if span is not None and span[0] == first:
                start[row, j] = 10.0
            if span is not None and span[1] == last:
                end[row, j] = 10.0
    return SimpleNamespace(start_logits=start, end_logits=end)


def test_reads_official_json_into_flat_rows():
    rows = read_squad_json(FIXTURE_DEV)
    assert len(rows) == 9 and len(set(rows["title"])) == 3
    row = rows[6]
    assert row["title"] == "Music" and row["question"] == "Where was Beethoven born?"
    start = row["answers"]["answer_start"][0]
    assert row["context"][start : start + len(row["answers"]["text"][0])] == "Bonn"


def test_offline_split_is_by_article_seeded_and_disjoint(tokenizer, tmp_path):
    dm = squad_datamodule(tokenizer, tmp_path, offline_eval_fraction=0.34)
    train, held_out = dm.raw_split("train"), dm.raw_split("validation")
    assert set(train["title"]).isdisjoint(held_out["title"])
    assert set(train["id"]).isdisjoint(held_out["id"]) and len(train) + len(held_out) == 9
    assert len(set(held_out["title"])) == 1 and len(set(train["title"])) == 2  # 0.34 * 3 articles -> 1
    # the datamodule's split is split_by_article with its seed, whatever the order of the rows
    titles = read_squad_json(FIXTURE_DEV)["title"]

    def held_out_titles(titles, seed):
        return {titles[i] for i in split_by_article(titles, 0.34, seed)[1]}

    assert held_out_titles(titles, dm.seed) == set(held_out["title"])
    assert held_out_titles(titles[::-1], dm.seed) == set(held_out["title"])
    # other seeds hold out other articles
    assert len({frozenset(held_out_titles(titles, seed)) for seed in range(10)}) > 1


def test_training_windows_point_at_the_answer(tokenizer, tmp_path):
    # short windows, so long contexts become several windows and some miss the answer
    dm = squad_datamodule(tokenizer, tmp_path, max_length=32, doc_stride=8, offline_eval_fraction=0.01)
    raw = dm.raw_split("train")
    features = dm.dataset("train")
    assert len(features) > len(raw)
    inside = 0
    for feature in features:
        start, end = feature["start_positions"], feature["end_positions"]
        if start == 0:
            assert end == 0  # answer not in this window: both point at [CLS]
            continue
        assert start <= end and feature["token_type_ids"][start] == 1  # inside the context segment
        decoded = tokenizer.decode(feature["input_ids"][start : end + 1])
        assert squeeze(decoded) in {squeeze(row["answers"]["text"][0]) for row in raw}
        inside += 1
    assert inside >= len(raw)  # every answer fits in at least one window
    batch = next(iter(dm.train_dataloader()))
    assert batch["start_positions"].shape == (4,) and "offset_mapping" not in batch


def test_eval_windows_keep_example_index_and_context_offsets(tokenizer, tmp_path):
    dm = squad_datamodule(tokenizer, tmp_path, max_length=32, doc_stride=8)
    raw = dm.raw_split("validation")
    features = dm.dataset("validation")
    assert sorted(set(features["example_index"])) == list(range(len(raw)))
    batch = next(iter(dm.eval_dataloader("validation")))
    assert isinstance(batch["example_index"], list) and isinstance(batch["offset_mapping"], list)
    assert batch["input_ids"].shape[0] == len(batch["offset_mapping"]) == len(batch["example_index"])
    offsets, ids = batch["offset_mapping"][0], batch["input_ids"][0].tolist()
    context = raw[batch["example_index"][0]]["context"]
    assert offsets[0] is None  # [CLS] and the question are not answer candidates
    for token, span in zip(ids, offsets):
        if span is not None:  # a context token maps back to its characters in the context
            assert squeeze(tokenizer.decode([token]).replace("##", "")) in squeeze(context[span[0] : span[1]])


def test_postprocess_picks_the_best_valid_span():
    examples = [{"id": "a", "context": "Paris is in France."}, {"id": "b", "context": "Bonn."}]
    # tokens: [CLS] paris is in france [SEP] / [CLS] bonn [SEP] (+ padding)
    offsets = [[None, [0, 5], [6, 8], [9, 11], [12, 18], None], [None, [0, 4], None]]
    start = [np.array([9.0, 1.0, 0, 0, 5.0, 10.0]), np.array([0, 3.0, 0, -1, -1, -1])]
    end = [np.array([9.0, 0, 0, 0, 6.0, 10.0]), np.array([0, 2.0, 0, -1, -1, -1])]
    # [CLS]/[SEP] have the highest logits but are outside the context
    predictions = postprocess_qa_predictions(examples, [0, 1], offsets, start, end, n_best=5, max_answer_length=30)
    assert predictions == {"a": "France", "b": "Bonn"}
    # the best pair has its end before its start ("France" ... "Paris"): the best valid span wins
    start = [np.array([0, 1.0, 0, 0, 8.0, 0])]
    end = [np.array([0, 7.0, 0, 0, 0.5, 0])]
    assert postprocess_qa_predictions(examples[:1], [0], offsets[:1], start, end, 20, 30) == {"a": "France"}
    # spans longer than max_answer_length tokens are dropped
    start = [np.array([0, 5.0, 0, 0, 0, 0])]
    end = [np.array([0, 0, 0, 1.0, 5.0, 0])]
    assert postprocess_qa_predictions(examples[:1], [0], offsets[:1], start, end, 20, 4) == {"a": "Paris is in France"}
    assert postprocess_qa_predictions(examples[:1], [0], offsets[:1], start, end, 20, 3) == {"a": "Paris is in"}


def test_postprocess_takes_the_best_window_of_an_example():
    context = "Beethoven was born in Bonn in 1770."
    examples = [{"id": "x", "context": context}, {"id": "y", "context": "no features"}]
    first = [None, [0, 9], [10, 13], [14, 18], None]  # beethoven was born
    second = [None, [14, 18], [19, 21], [22, 26], None]  # born in bonn (overlapping window)
    start = [np.array([0, 2.0, 0, 0, 0]), np.array([0, 0, 0, 4.0, 0])]
    end = [np.array([0, 2.0, 0, 0, 0]), np.array([0, 0, 0, 4.0, 0])]
    predictions = postprocess_qa_predictions(examples, [0, 0], [first, second], start, end, 20, 30)
    assert predictions == {"x": "Bonn", "y": ""}


def test_squad_scores_on_known_predictions():
    examples = [
        {"id": "1", "answers": {"text": ["Bonn"], "answer_start": [0]}},
        {"id": "2", "answers": {"text": ["nine symphonies", "nine"], "answer_start": [0, 0]}},
        {"id": "3", "answers": {"text": ["the Mediterranean Sea"], "answer_start": [0]}},
    ]
    perfect = {"1": "Bonn", "2": "nine", "3": "Mediterranean sea."}  # articles/case/punctuation normalized
    assert squad_scores(perfect, examples) == {"exact_match": 1.0, "f1": 1.0}
    # "symphonies" vs best gold "nine symphonies": precision 1, recall 1/2 -> F1 2/3; "Cologne": 0
    scores = squad_scores({"1": "Cologne", "2": "symphonies", "3": "the Mediterranean Sea"}, examples)
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx((0 + 2 / 3 + 1) / 3)


def test_evaluator_perfect_logits_through_the_eval_loader(tokenizer, tmp_path):
    """Logits that peak on the gold span of every window give EM = F1 = 1 over the whole split."""
    dm = squad_datamodule(tokenizer, tmp_path, max_length=32, doc_stride=8)
    raw = dm.raw_split("validation")
    evaluator = dm.make_evaluator("validation")
    assert isinstance(evaluator, QAEvaluator)
    for batch in dm.eval_dataloader("validation"):
        evaluator.update(batch, gold_logits(batch, raw))
    assert evaluator.compute() == {"exact_match": 1.0, "f1": 1.0}


def test_evaluator_with_one_wrong_answer():
    examples = [
        {"id": "b", "context": "Born in Bonn.", "answers": {"text": ["Bonn"], "answer_start": [8]}},
        {"id": "s", "context": "He wrote nine symphonies.", "answers": {"text": ["nine symphonies"], "answer_start": [9]}},
    ]
    evaluator = QAEvaluator(examples, n_best=20, max_answer_length=30)
    # one batch, one window per example: [CLS] q [SEP] context tokens [SEP]
    batch = {
        "example_index": [1, 0],
        "offset_mapping": [
            [None, None, None, [0, 2], [3, 8], [9, 13], [14, 24], None],  # he wrote nine symphonies
            [None, None, None, [0, 4], [5, 7], [8, 12], None, None],  # born in bonn (+ padding)
        ],
    }
    start = torch.tensor([[0, 0, 0, 0, 0, 9.0, 0, 0], [0, 0, 0, 0, 0, 9.0, 0, 0]])
    end = torch.tensor([[0, 0, 0, 0, 0, 9.0, 0, 0], [0, 0, 0, 0, 0, 9.0, 0, 0]])  # "nine": half the gold
    evaluator.update(batch, SimpleNamespace(start_logits=start, end_logits=end))
    scores = evaluator.compute()
    # "nine" vs "nine symphonies": EM 0, precision 1, recall 1/2 -> F1 2/3
    assert scores == pytest.approx({"exact_match": 0.5, "f1": (1 + 2 / 3) / 2})


def test_missing_train_file_suggests_offline_task(tokenizer, tmp_path):
    dm = squad_datamodule(tokenizer, tmp_path, task="squad")
    with pytest.raises(GrainError, match=r"squad/v1.1/train.json.*task=squad_offline.*unset GRAIN_DATA_DIR"):
        dm.raw_split("train")
    assert len(dm.raw_split("validation")) == 9  # the official dev file itself is the eval split


def test_question_too_long_for_the_window_is_a_clear_error(tokenizer, tmp_path):
    dm = squad_datamodule(tokenizer, tmp_path, max_length=16, doc_stride=8)
    with pytest.raises(GrainError, match=r"question q\d has \d+ tokens.*doc_stride=8.*max_length"):
        dm.dataset("validation")


def test_offline_eval_fraction_must_be_a_fraction(tokenizer, tmp_path):
    dm = squad_datamodule(tokenizer, tmp_path, offline_eval_fraction=1.5)
    with pytest.raises(GrainError, match=r"offline_eval_fraction=1.5.*between 0 and 1"):
        dm.raw_split("train")


@pytest.mark.skipif(not (SHARED_DATA / "squad").exists(), reason="offline data dir (../shared/data) not present")
def test_shared_squad_dev_has_all_questions(tokenizer, tmp_path):
    dev = read_squad_json(SHARED_DATA / "squad/v1.1/dev.json")
    assert len(dev) == 10570 and len(set(dev["title"])) == 48
    assert sum(len(a["text"]) for a in dev["answers"]) == 34726
    dm = squad_datamodule(tokenizer, tmp_path, data_dir=SHARED_DATA)  # squad_offline
    train, held_out = dm.raw_split("train"), dm.raw_split("validation")
    assert len(train) + len(held_out) == 10570 and len(set(held_out["title"])) == 10  # round(0.2 * 48)
    assert set(train["title"]).isdisjoint(held_out["title"])

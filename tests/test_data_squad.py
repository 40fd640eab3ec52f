"""SQuAD: windows and answer positions, post-processing, the offline split, EM/F1 values."""

import numpy as np
import pytest

from grain.data.squad import read_squad_json, split_by_article
from grain.errors import GrainError
from grain.metrics.qa import postprocess_qa_predictions, squad_scores
from grain.training import build_datamodule
from tests.conftest import FIXTURES, SHARED_DATA, compose_config


def squad_datamodule(tokenizer, tmp_path, task="squad_offline", data_dir=FIXTURES, **datamodule):
    cfg = compose_config([f"task={task}", "model=tiny", *[f"task.datamodule.{k}={v}" for k, v in datamodule.items()]], tmp_path)
    cfg.paths.data_dir = str(data_dir)
    return build_datamodule(cfg, tokenizer, batch_size=4, max_train_samples=None)


def test_offline_split_is_by_article_seeded_and_disjoint(tokenizer, tmp_path):
    dm = squad_datamodule(tokenizer, tmp_path, **{"offline_eval_fraction": 0.34})
    train, held_out = dm.raw_split("train"), dm.raw_split("validation")
    assert set(train["title"]).isdisjoint(held_out["title"])
    assert len(train) + len(held_out) == 9 and len(set(held_out["title"])) == 1
    again = split_by_article(read_squad_json(FIXTURES / "squad/v1.1/dev.json"), 0.34, dm.seed)
    assert sorted(held_out["id"]) == sorted(read_squad_json(FIXTURES / "squad/v1.1/dev.json").select(again[1])["id"])


def test_training_windows_point_at_the_answer(tokenizer, tmp_path):
    dm = squad_datamodule(tokenizer, tmp_path, max_length=48, doc_stride=16, offline_eval_fraction=0.01)
    raw = dm.raw_split("train")
    features = dm.dataset("train")
    assert len(features) >= len(raw)  # long contexts give several windows
    found = 0
    for feature in features:
        if feature["start_positions"] == 0:
            continue
        text = tokenizer.decode(feature["input_ids"][feature["start_positions"] : feature["end_positions"] + 1])
        answers = ["".join(a.lower().split()) for row in raw for a in row["answers"]["text"]]
        assert "".join(text.lower().split()) in answers  # decoding re-spaces punctuation
        found += 1
    assert found >= len(raw) // 2


def test_postprocess_picks_the_best_valid_span():
    examples = [{"id": "a", "context": "Paris is in France."}, {"id": "b", "context": "Bonn."}]
    offsets = [[None, (0, 5), (6, 8), (9, 11), (12, 18), None], [None, (0, 4), None, None, None, None]]
    start = [np.array([9.0, 1.0, 0, 0, 5.0, 10.0]), np.array([0, 3.0, 0, 0, 0, 0])]
    end = [np.array([9.0, 0, 0, 0, 6.0, 10.0]), np.array([0, 2.0, 0, 0, 0, 0])]
    # position 0 / 5 are outside the context and must be ignored despite the higher logits
    predictions = postprocess_qa_predictions(examples, [0, 1], offsets, start, end, n_best=5, max_answer_length=30)
    assert predictions == {"a": "France", "b": "Bonn"}
    # an end before its start is never chosen
    start2 = [np.array([0, 0, 0, 0, 8.0, 0])]
    end2 = [np.array([0, 7.0, 0, 0, 1.0, 0])]
    assert postprocess_qa_predictions(examples[:1], [0], offsets[:1], start2, end2) == {"a": "France"}


def test_squad_scores_on_known_predictions():
    examples = [
        {"id": "1", "answers": {"text": ["Bonn"], "answer_start": [0]}},
        {"id": "2", "answers": {"text": ["nine symphonies"], "answer_start": [0]}},
    ]
    assert squad_scores({"1": "Bonn", "2": "nine symphonies"}, examples) == {"exact_match": 1.0, "f1": 1.0}
    scores = squad_scores({"1": "Bonn", "2": "nine"}, examples)
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx((1.0 + 2 * 1.0 * 0.5 / 1.5) / 2)


def test_evaluation_end_to_end_with_answer_logits(tokenizer, tmp_path):
    """Logits that peak on the gold span give EM = F1 = 1 through the whole eval path."""
    import torch
    from types import SimpleNamespace

    dm = squad_datamodule(tokenizer, tmp_path)
    evaluator = dm.make_evaluator("validation")
    raw = dm.raw_split("validation")
    for batch in dm.eval_dataloader("validation"):
        start = torch.full(batch["input_ids"].shape, -10.0)
        end = torch.full(batch["input_ids"].shape, -10.0)
        for row, (example, offsets) in enumerate(zip(batch["example_index"].tolist(), batch["offset_mapping"])):
            answer = raw[example]["answers"]
            a, b = answer["answer_start"][0], answer["answer_start"][0] + len(answer["text"][0])
            for j, span in enumerate(offsets):
                if span is not None and span[0] == a:
                    start[row, j] = 10.0
                if span is not None and span[1] == b:
                    end[row, j] = 10.0
        evaluator.update(batch, SimpleNamespace(start_logits=start, end_logits=end))
    assert evaluator.compute() == {"exact_match": 1.0, "f1": 1.0}


def test_missing_train_file_suggests_offline_task(tokenizer, tmp_path):
    dm = squad_datamodule(tokenizer, tmp_path, task="squad")
    with pytest.raises(GrainError, match=r"squad/v1.1/train.json.*task=squad_offline"):
        dm.raw_split("train")


@pytest.mark.skipif(not (SHARED_DATA / "squad").exists(), reason="offline data dir (../shared/data) not present")
def test_shared_squad_dev_has_all_questions():
    assert len(read_squad_json(SHARED_DATA / "squad/v1.1/dev.json")) == 10570

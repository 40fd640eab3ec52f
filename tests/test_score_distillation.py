"""Score distillation for one-logit heads (regression, cross-encoder rerankers): MSE on the teacher's
scores and MarginMSE on the margins of (positive, negative) pairs, chosen by distillation.score_loss."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from grain.config import validate_config
from grain.distill.losses import margin_mse, score_mse
from grain.errors import GrainError
from grain.models.backbone import load_task_model
from grain.modules.student import score_loss_of
from grain.stages.trainer import build_datamodule
from grain.tasks.evaluate import evaluate
from tests.helpers.configs import compose_config
from tests.helpers.paths import FIXTURES, REPO
from tests.helpers.runs import run_grain, summaries

TRAIN, DEV = FIXTURES / "own_data" / "sst2_train.csv", FIXTURES / "own_data" / "sst2_dev.csv"
# SST-2's sentiment read as a number: a one-logit regression head
REGRESSION = [f"task.train_file={TRAIN}", f"task.validation_file={DEV}", "task.text_columns=[sentence]",
              "task.label_column=label", "task.num_labels=1", "task.metric=pearson"]


def test_score_mse_and_margin_mse_of_known_scores():
    student, teacher = torch.tensor([[1.0], [0.0], [2.0], [1.0]]), torch.tensor([3.0, 1.0, 2.0, 2.0])
    assert float(score_mse(student, teacher)) == pytest.approx((4 + 1 + 0 + 1) / 4)
    # margins: student 1 and 1, teacher 2 and 0
    assert float(margin_mse(student, teacher)) == pytest.approx(((1 - 2) ** 2 + (1 - 0) ** 2) / 2)
    assert float(margin_mse(student + 5, teacher)) == pytest.approx(float(margin_mse(student, teacher)))  # shifts don't count
    with pytest.raises(ValueError, match="pairs of rows"):
        margin_mse(student[:3], teacher[:3])


def test_score_loss_defaults_to_mse_for_one_logit():
    one, two = type("C", (), {"num_labels": 1})(), type("C", (), {"num_labels": 2})()
    assert score_loss_of({"score_loss": None}, one) == "mse" and score_loss_of({}, two) == "kd"
    assert score_loss_of({"score_loss": "margin_mse"}, one) == "margin_mse"


@pytest.mark.parametrize("overrides,message", [
    (["distillation.score_loss=kd"], "constant for one output"),
    (["distillation.score_loss=margin_mse"], "does not train on; use distillation.score_loss=mse"),
    (["distillation.score_loss=mean"], "expected one of"),
])
def test_bad_score_losses_are_refused_in_one_line(overrides, message, tmp_path):
    cfg = compose_config(["task=text_classification", "model=tiny", *REGRESSION, *overrides], tmp_path)
    with pytest.raises(GrainError, match=message) as err:
        validate_config(cfg)
    assert "\n" not in str(err.value)


def test_tiny_regression_run_distils_teacher_scores_without_labels(tmp_path, tokenizer):
    """A regression run with score_loss=mse and no hard labels: its distilled student's Pearson on the dev
    split is above the same student's before distillation (the pre-trained backbone with a new head)."""
    args = ["task=text_classification", *REGRESSION, "model=tiny", "distillation.score_loss=mse",
            "teacher.epochs=8", "student.epochs=8", "teacher.batch_size=8", "student.batch_size=8", "teacher.lr=1e-3",
            "student.lr=1e-3", "sparsity=0.5", "logger=none"]
    result = run_grain(args, tmp_path, data_dir=None, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = summaries(tmp_path)
    summary = json.loads(path.read_text())
    assert summary["metric_name"] == "pearson"

    cfg = compose_config(args, tmp_path)
    datamodule = build_datamodule(cfg, tokenizer, 8, None)
    datamodule.setup("validate")
    untrained = load_task_model(cfg.model, AutoModelForSequenceClassification, 1)  # student.init=pretrained
    before = evaluate(untrained, datamodule, "untrained")["validation/pearson"]
    after, teacher = summary["student"]["metric"], summary["teacher"]["metric"]
    print(f"dev Pearson: teacher {teacher:.3f}, untrained student {before:.3f}, distilled student {after:.3f}")
    assert after > before + 0.2

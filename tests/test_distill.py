"""Distillation losses against values computed by hand (airaria/GRAIN's kd_ce_loss)."""

import math
from types import SimpleNamespace

import pytest
import torch

from grain.distill.losses import kd_loss, soft_cross_entropy
from grain.tasks.classification.task import ClassificationTask
from grain.tasks.question_answering.task import QuestionAnsweringTask
from grain.tasks.token_classification.task import TokenClassificationTask


def hand_soft_ce(student: list[float], teacher: list[float], temperature: float) -> float:
    t = [math.exp(x / temperature) for x in teacher]
    s = [math.exp(x / temperature) for x in student]
    return -sum(ti / sum(t) * math.log(si / sum(s)) for ti, si in zip(t, s))


def test_soft_cross_entropy_by_hand():
    student, teacher = [1.0, 0.0, -1.0], [0.0, 2.0, 0.5]
    loss = soft_cross_entropy(torch.tensor([student]), torch.tensor([teacher]), 2.0)
    assert float(loss) == pytest.approx(hand_soft_ce(student, teacher, 2.0), rel=1e-6)


def test_squad_kd_sums_start_and_end_losses():
    """As PruneDistiller.compute_loss: `total_kd_loss += kd_ce_loss(...)` over (start, end) logits."""
    start_s, start_t = [[1.0, 0.0, -1.0, 0.5]], [[0.0, 2.0, 0.5, 0.0]]
    end_s, end_t = [[0.0, 0.0, 3.0, 0.0]], [[1.0, -1.0, 0.0, 2.0]]
    student = SimpleNamespace(start_logits=torch.tensor(start_s), end_logits=torch.tensor(end_s))
    teacher = SimpleNamespace(start_logits=torch.tensor(start_t), end_logits=torch.tensor(end_t))
    expected = hand_soft_ce(start_s[0], start_t[0], 8.0) + hand_soft_ce(end_s[0], end_t[0], 8.0)
    task = QuestionAnsweringTask
    assert task.distillation_positions({}) is None
    loss = kd_loss(task.prediction_logits(student), task.prediction_logits(teacher), 8.0, task.distillation_positions({}))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_classification_kd_is_one_loss():
    student = SimpleNamespace(logits=torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    teacher = SimpleNamespace(logits=torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    expected = (hand_soft_ce([1.0, 0.0], [0.0, 1.0], 2.0) + hand_soft_ce([0.0, 1.0], [0.0, 1.0], 2.0)) / 2
    task = ClassificationTask
    loss = kd_loss(task.prediction_logits(student), task.prediction_logits(teacher), 2.0, task.distillation_positions({}))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_token_classification_kd_counts_labelled_positions_only():
    """Sub-tokens after a word's first, special tokens and padding (label -100) leave the KD loss."""
    student_rows = [[[1.0, 0.0], [5.0, -5.0], [0.0, 2.0]], [[0.5, 0.5], [3.0, 1.0], [-9.0, 9.0]]]
    teacher_rows = [[[0.0, 1.0], [-5.0, 5.0], [1.0, 0.0]], [[2.0, 0.0], [0.0, 0.0], [9.0, -9.0]]]
    batch = {"labels": torch.tensor([[-100, 1, 0], [0, -100, -100]])}
    student = SimpleNamespace(logits=torch.tensor(student_rows))
    teacher = SimpleNamespace(logits=torch.tensor(teacher_rows))
    task = TokenClassificationTask
    kept = [(0, 1), (0, 2), (1, 0)]
    expected = sum(hand_soft_ce(student_rows[r][p], teacher_rows[r][p], 2.0) for r, p in kept) / len(kept)
    loss = kd_loss(task.prediction_logits(student), task.prediction_logits(teacher), 2.0, task.distillation_positions(batch))
    assert float(loss) == pytest.approx(expected, rel=1e-6)

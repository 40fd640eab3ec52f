"""Distillation losses: temperature-scaled soft cross-entropy on logits, score MSE and MarginMSE on
one-logit heads, embedding MSE and cosine, hidden-state MSE."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over positions of -sum softmax(t/T) * log_softmax(s/T) over the last dim (no T^2 factor).

    logits: [..., classes]; valid: bool [...] selecting the positions that count (None: all; with
    none valid the loss is 0). A masked mean rather than `per_position[valid]`: boolean indexing has
    a data-dependent size, which syncs a GPU with the host every step.
    """
    teacher_probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    per_position = -(teacher_probs * student_log_probs).sum(dim=-1)
    if valid is None:
        return per_position.mean()
    total = torch.where(valid, per_position, 0.0).sum()  # where, not a product: padding may hold inf
    return total / valid.sum().clamp_min(1)


def kd_loss(
    student_logits: Sequence[torch.Tensor],
    teacher_logits: Sequence[torch.Tensor],
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """KD on a task's logits: the sum over its logit tensors of `soft_cross_entropy`.

    student_logits, teacher_logits: the task's `prediction_logits` of each model, pairwise of one
    shape ([..., classes]); valid: bool [...] of the positions that count (the task's
    `distillation_positions`; None: all). Several tensors (a span's start and end logits) are summed, as
    airaria/GRAIN (PruneDistiller.compute_loss adds `kd_ce_loss` over the logits list).
    """
    losses = [soft_cross_entropy(s, t, temperature, valid) for s, t in zip(student_logits, teacher_logits, strict=True)]
    return torch.stack(losses).sum()


def hidden_mse(
    student_states: list[torch.Tensor],
    teacher_states: list[torch.Tensor],
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Sum over matched layers of the MSE averaged over non-padding tokens and hidden units.

    states: [batch, seq, hidden] each (students already projected); attention_mask: [batch, seq].
    """
    weights = attention_mask.unsqueeze(-1).float()
    denominator = weights.sum() * student_states[0].shape[-1]
    total = student_states[0].new_zeros((), dtype=torch.float32)
    for student, teacher in zip(student_states, teacher_states):
        total = total + (((student.float() - teacher.float()) ** 2) * weights).sum() / denominator
    return total


def embedding_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mse_weight: float = 1.0,
    cosine_weight: float = 1.0,
) -> torch.Tensor:
    """Distillation in embedding space: `mse_weight` x MSE (mean over rows and dimensions) plus
    `cosine_weight` x the mean cosine distance (1 - cos) between student and teacher sentence embeddings.

    student, teacher: [batch, dim] sentence embeddings as the model's pooling gives them, before any
    normalization. MSE on embeddings is sentence-transformers' `MSELoss` (Reimers & Gurevych 2020,
    "Making monolingual sentence embeddings multilingual using knowledge distillation"); the cosine
    term keeps the direction that cosine retrieval and STS read, whatever the norm.
    """
    student, teacher = student.float(), teacher.float()
    mse = F.mse_loss(student, teacher)
    cosine = (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    return mse_weight * mse + cosine_weight * cosine


def score_mse(student_scores: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """Pointwise score distillation: the MSE between student and teacher scores ([batch] or [batch, 1]:
    a one-logit head's logits, e.g. a cross-encoder reranker's or a regression head's)."""
    return F.mse_loss(student_scores.float().reshape(-1), teacher_scores.float().reshape(-1))


def margin_mse(student_scores: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """MarginMSE (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
    Knowledge Distillation", eq. 1): the MSE between the student's and the teacher's score margins
    s(q, positive) - s(q, negative).

    scores: [batch] or [batch, 1], rows in (positive, negative) pairs of one query each: rows 0 and 1,
    2 and 3, ... (an even batch). Raises ValueError on an odd batch.
    """
    student, teacher = student_scores.float().reshape(-1), teacher_scores.float().reshape(-1)
    if student.shape[0] % 2:
        raise ValueError(f"margin_mse: {student.shape[0]} rows; it reads (positive, negative) pairs of rows")
    return F.mse_loss(student[0::2] - student[1::2], teacher[0::2] - teacher[1::2])

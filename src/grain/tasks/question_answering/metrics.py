"""Extractive QA: start/end logits of windows -> answer text -> exact match and F1 (torchmetrics SQuAD)."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np
from torchmetrics.text import SQuAD

from grain.tasks.gather import GatheredRows


def best_span(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: Sequence,
    n_best: int,
    max_answer_length: int,
) -> tuple[float, tuple[int, int] | None]:
    """Highest-scoring valid (start token, end token) of one window and its score start + end logit.

    start_logits, end_logits: [seq] (seq may include padding beyond len(offsets)); offsets: per token
    of the window a (start, end) character span, or None outside the context. Returns (-inf, None)
    when the window has no valid span.
    """
    length = min(len(offsets), len(start_logits))
    in_context = np.array([offsets[j] is not None for j in range(length)], dtype=bool)
    if not in_context.any():
        return -np.inf, None
    # mask tokens outside the context before taking the top n: they can never be an answer
    starts = np.where(in_context, start_logits[:length], -np.inf)
    ends = np.where(in_context, end_logits[:length], -np.inf)
    top_starts = np.argsort(-starts, kind="stable")[:n_best]
    top_ends = np.argsort(-ends, kind="stable")[:n_best]
    scores = starts[top_starts][:, None] + ends[top_ends][None, :]  # [n_best, n_best]
    span_length = top_ends[None, :] - top_starts[:, None] + 1
    scores = np.where((span_length >= 1) & (span_length <= max_answer_length), scores, -np.inf)
    i, k = np.unravel_index(np.argmax(scores), scores.shape)
    if not np.isfinite(scores[i, k]):
        return -np.inf, None
    return float(scores[i, k]), (int(top_starts[i]), int(top_ends[k]))


def postprocess_qa_predictions(
    examples: Iterable[dict],
    features_example_index: Sequence[int],
    features_offsets: Sequence[Sequence],
    all_start_logits: Sequence[np.ndarray],
    all_end_logits: Sequence[np.ndarray],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Turn the start/end logits of every window (feature) into one answer text per example.

    A long context is cut into several overlapping windows, so one example can have several features.
    For every feature the `n_best` highest start and end logits over its context tokens are paired;
    pairs with the end before the start or longer than `max_answer_length` tokens are dropped, and the
    pair with the highest start + end logit over all windows of the example is its answer: the
    context's characters from the start token's first character to the end token's last one.

    Args:
        examples: the raw eval rows (a `datasets.Dataset` or a list of dicts), each with `id` (str)
            and `context` (str); their order defines the example positions below.
        features_example_index: [num_features] for each feature, the position of its example in
            `examples` (the datamodule's `example_index` column).
        features_offsets: [num_features] for each feature, per token its (start, end) character span
            in the example's context, or None for tokens that are not context (question, special
            tokens); the datamodule's `offset_mapping` column. May be shorter than the logits, which
            then include padding that is ignored.
        all_start_logits: [num_features] arrays [seq] of the model's start logits per token.
        all_end_logits: [num_features] arrays [seq] of the model's end logits per token.
        n_best: how many of the highest start and of the highest end positions of a feature are
            paired into candidate spans (n_best * n_best candidates per feature).
        max_answer_length: the longest answer considered, in tokens (end - start + 1).

    Returns:
        {example id: predicted answer text}; "" for an example without features or valid spans.
    """
    features_by_example: dict[int, list[int]] = defaultdict(list)
    for feature, example in enumerate(features_example_index):
        features_by_example[int(example)].append(feature)
    predictions = {}
    for position, example in enumerate(examples):
        best_score, best_text = -np.inf, ""
        for feature in features_by_example.get(position, []):
            offsets = features_offsets[feature]
            score, span = best_span(
                np.asarray(all_start_logits[feature]), np.asarray(all_end_logits[feature]), offsets,
                n_best, max_answer_length,
            )
            if span is not None and score > best_score:
                best_score = score
                best_text = example["context"][offsets[span[0]][0] : offsets[span[1]][1]]
        predictions[example["id"]] = best_text
    return predictions


def squad_scores(predictions: dict[str, str], examples: Iterable[dict]) -> dict[str, float]:
    """Exact match and F1 of `predictions` ({id: text}) against every example's gold answers (the
    best over its answers, SQuAD normalization), averaged over examples, as fractions in [0, 1].

    An example without a prediction counts as the empty answer.
    """
    examples = list(examples)
    if not examples:
        return {"exact_match": 0.0, "f1": 0.0}
    preds = [{"prediction_text": predictions.get(ex["id"], ""), "id": ex["id"]} for ex in examples]
    targets = [{"answers": ex["answers"], "id": ex["id"]} for ex in examples]
    scores = SQuAD(sync_on_compute=False)(preds, targets)  # whole split in this process: no cross-rank gather
    # torchmetrics reports percents
    return {"exact_match": float(scores["exact_match"]) / 100, "f1": float(scores["f1"]) / 100}


class QAEvaluator(GatheredRows):
    """Collects window logits over an eval split; `compute()` -> {"exact_match", "f1"} in [0, 1].

    examples: the split's raw rows (id, context, answers) that the batches' `example_index` points into.
    Windows are keyed by `example_index`, so rows gathered from several processes come in any order.
    """

    gathered = ("example_index", "offsets", "start_logits", "end_logits")

    def __init__(self, examples, n_best: int = 20, max_answer_length: int = 30):
        self.examples = examples
        self.n_best = n_best
        self.max_answer_length = max_answer_length
        self.example_index: list[int] = []
        self.offsets: list[list] = []
        self.start_logits: list[np.ndarray] = []
        self.end_logits: list[np.ndarray] = []

    def update(self, batch: dict, outputs) -> None:
        """batch: an eval batch with `example_index` and `offset_mapping` lists; outputs: the model's
        output with start_logits and end_logits [batch, seq] (any device, any float dtype)."""
        self.example_index.extend(int(i) for i in batch["example_index"])
        self.offsets.extend(batch["offset_mapping"])
        # kept on CPU in float32 so a whole eval split does not hold GPU memory
        self.start_logits.extend(outputs.start_logits.detach().float().cpu().numpy())
        self.end_logits.extend(outputs.end_logits.detach().float().cpu().numpy())

    def compute(self) -> dict[str, float]:
        predictions = postprocess_qa_predictions(
            self.examples, self.example_index, self.offsets, self.start_logits, self.end_logits,
            self.n_best, self.max_answer_length,
        )
        return squad_scores(predictions, self.examples)

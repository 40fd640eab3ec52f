"""Extractive QA: start/end logits of windows -> answer text -> exact match and F1 (torchmetrics)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torchmetrics.text import SQuAD


def postprocess_qa_predictions(
    examples,
    feature_example_index: list[int],
    feature_offsets: list[list],
    start_logits: list[np.ndarray],
    end_logits: list[np.ndarray],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Pick each example's answer text from the logits of its windows.

    Args:
        examples: the raw eval rows (with `id` and `context`), indexed by position.
        feature_example_index: for each window (feature), the position of its example in `examples`.
        feature_offsets: for each window, per token the (start, end) character span of that token in
            the context, or None for tokens outside the context (question, special tokens, padding).
        start_logits, end_logits: for each window, the model's logits over its tokens [seq].
        n_best: how many top start and end positions of a window are paired up as candidates.
        max_answer_length: the longest answer considered, in tokens.
    Returns:
        {example id: answer text}; the candidate with the highest start + end logit over all windows
        of the example, or "" if no valid span exists.
    """
    windows = defaultdict(list)
    for feature, example in enumerate(feature_example_index):
        windows[int(example)].append(feature)
    predictions = {}
    for example_position in range(len(examples)):
        example = examples[example_position]
        best_score, best_text = -np.inf, ""
        for feature in windows.get(example_position, []):
            offsets = feature_offsets[feature]
            starts, ends = start_logits[feature], end_logits[feature]
            length = min(len(offsets), len(starts))
            top_starts = np.argsort(starts[:length])[::-1][:n_best]
            top_ends = np.argsort(ends[:length])[::-1][:n_best]
            for s in top_starts:
                for e in top_ends:
                    if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = starts[s] + ends[e]
                    if score > best_score:
                        best_score = score
                        best_text = example["context"][offsets[s][0] : offsets[e][1]]
        predictions[example["id"]] = best_text
    return predictions


class QAEvaluator:
    """Collects window logits over an eval split; `compute()` -> {"exact_match", "f1"} in [0, 1]."""

    def __init__(self, examples, n_best: int = 20, max_answer_length: int = 30):
        self.examples = examples
        self.n_best, self.max_answer_length = n_best, max_answer_length
        self.example_index: list[int] = []
        self.offsets: list[list] = []
        self.start_logits: list[np.ndarray] = []
        self.end_logits: list[np.ndarray] = []

    def update(self, batch: dict, outputs) -> None:
        self.example_index.extend(batch["example_index"].tolist())
        self.offsets.extend(batch["offset_mapping"])
        self.start_logits.extend(outputs.start_logits.float().cpu().numpy())
        self.end_logits.extend(outputs.end_logits.float().cpu().numpy())

    def compute(self) -> dict[str, float]:
        predictions = postprocess_qa_predictions(
            self.examples, self.example_index, self.offsets, self.start_logits, self.end_logits,
            self.n_best, self.max_answer_length,
        )
        return squad_scores(predictions, self.examples)


def squad_scores(predictions: dict[str, str], examples) -> dict[str, float]:
    """Exact match and F1 over all examples (a missing prediction counts as ""), as fractions."""
    metric = SQuAD()
    preds = [{"prediction_text": predictions.get(ex["id"], ""), "id": ex["id"]} for ex in examples]
    targets = [{"answers": ex["answers"], "id": ex["id"]} for ex in examples]
    scores = metric(preds, targets)
    return {"exact_match": float(scores["exact_match"]) / 100, "f1": float(scores["f1"]) / 100}

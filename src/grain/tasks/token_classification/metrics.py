"""Entity-level NER metrics with seqeval (strict IOB2 matching), on the labelled (first sub-token) positions."""

from __future__ import annotations

from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from grain.tasks.gather import GatheredRows

IGNORE_INDEX = -100  # label of the positions the loss, distillation and metrics skip (PyTorch cross-entropy's default)


class NEREvaluator(GatheredRows):
    """Collects tag sequences of an eval split; `compute()` -> {"f1", "precision", "recall", "accuracy"}
    in [0, 1]. f1/precision/recall are micro-averaged over entities (an entity counts only when its
    type and both boundaries match); accuracy is per labelled token.

    labels: the tag names, indexed by label id (e.g. CoNLL's ["O", "B-PER", ...]).
    """

    gathered = ("predictions", "references")

    def __init__(self, labels: list[str]):
        self.labels = list(labels)
        self.predictions: list[list[str]] = []
        self.references: list[list[str]] = []

    def update(self, batch: dict, outputs) -> None:
        """batch["labels"]: [batch, seq] label ids, -100 where not scored; outputs.logits:
        [batch, seq, num_labels]. Each row becomes one sentence of tags over its scored positions."""
        predicted = outputs.logits.argmax(dim=-1).cpu().tolist()
        gold = batch["labels"].cpu().tolist()
        for row_predicted, row_gold in zip(predicted, gold):
            kept = [(p, g) for p, g in zip(row_predicted, row_gold) if g != IGNORE_INDEX]
            self.predictions.append([self.labels[p] for p, _ in kept])
            self.references.append([self.labels[g] for _, g in kept])

    def compute(self) -> dict[str, float]:
        if not any(self.references):
            return {"f1": 0.0, "precision": 0.0, "recall": 0.0, "accuracy": 0.0}
        # strict: an entity predicted as I-X without a B-X (lenient CoNLL-eval style) does not count
        strict = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
        return {
            "f1": float(f1_score(self.references, self.predictions, **strict)),
            "precision": float(precision_score(self.references, self.predictions, **strict)),
            "recall": float(recall_score(self.references, self.predictions, **strict)),
            "accuracy": float(accuracy_score(self.references, self.predictions)),
        }

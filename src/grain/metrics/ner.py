"""Entity-level NER metrics with seqeval (strict IOB2 matching), on first sub-token positions."""

from __future__ import annotations

from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2


class NEREvaluator:
    """Collects tag sequences of an eval split; `compute()` -> {"f1", "precision", "recall", "accuracy"}."""

    def __init__(self, labels: list[str]):
        self.labels = labels
        self.predictions: list[list[str]] = []
        self.references: list[list[str]] = []

    def update(self, batch: dict, outputs) -> None:
        predicted = outputs.logits.argmax(dim=-1).cpu()
        gold = batch["labels"].cpu()
        for row_pred, row_gold in zip(predicted.tolist(), gold.tolist()):
            kept = [(p, g) for p, g in zip(row_pred, row_gold) if g != -100]
            self.predictions.append([self.labels[p] for p, _ in kept])
            self.references.append([self.labels[g] for _, g in kept])

    def compute(self) -> dict[str, float]:
        strict = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
        return {
            "f1": float(f1_score(self.references, self.predictions, **strict)),
            "precision": float(precision_score(self.references, self.predictions, **strict)),
            "recall": float(recall_score(self.references, self.predictions, **strict)),
            "accuracy": float(accuracy_score(self.references, self.predictions)),
        }

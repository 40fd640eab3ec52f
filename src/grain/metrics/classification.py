"""Classification metrics: accuracy, plus F1 of the positive class for binary tasks (QQP)."""

from __future__ import annotations

import torch
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy


class ClassificationEvaluator:
    """Accumulates predictions of one eval split; `compute()` returns {"accuracy", ["f1"]} in [0, 1]."""

    def __init__(self, num_labels: int):
        self.accuracy = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.f1 = BinaryF1Score() if num_labels == 2 else None

    def update(self, batch: dict, outputs) -> None:
        predictions = outputs.logits.argmax(dim=-1).cpu()
        labels = batch["labels"].cpu()
        self.accuracy.update(predictions, labels)
        if self.f1 is not None:
            self.f1.update(predictions, labels)

    def compute(self) -> dict[str, float]:
        result = {"accuracy": float(self.accuracy.compute())}
        if self.f1 is not None:
            result["f1"] = float(self.f1.compute())
        return result

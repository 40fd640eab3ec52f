"""Classification metrics: accuracy, plus F1 of the positive class for binary tasks (QQP)."""

from __future__ import annotations

import torch
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy


class ClassificationEvaluator:
    """Accumulates predictions of one eval split; `compute()` returns {"accuracy", ["f1"]} in [0, 1]."""

    def __init__(self, num_labels: int):
        # Each process evaluates the whole split (and the compact stage runs on rank 0 alone under
        # DDP), so the metrics must not gather across processes: that would wait for absent ranks.
        self.accuracy = MulticlassAccuracy(num_classes=num_labels, average="micro", sync_on_compute=False)
        self.f1 = BinaryF1Score(sync_on_compute=False) if num_labels == 2 else None

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

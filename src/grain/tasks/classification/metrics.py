"""Classification metrics: accuracy, plus F1 of the positive class for binary tasks (QQP)."""

from __future__ import annotations

import torch
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy

from grain.metrics.gather import GatheredRows


class ClassificationEvaluator(GatheredRows):
    """Collects the predictions of one eval split; `compute()` returns {"accuracy", ["f1"]} in [0, 1]
    (torchmetrics, over every row collected here, or in every process after `gather()`)."""

    gathered = ("predictions", "labels")

    def __init__(self, num_labels: int):
        self.num_labels = num_labels
        self.predictions: list[torch.Tensor] = []  # [batch] predicted label ids per batch, CPU
        self.labels: list[torch.Tensor] = []

    def update(self, batch: dict, outputs) -> None:
        self.predictions.append(outputs.logits.argmax(dim=-1).cpu())
        self.labels.append(batch["labels"].cpu())

    def compute(self) -> dict[str, float]:
        if not self.predictions:
            raise ValueError("ClassificationEvaluator.compute: no rows were collected (an empty eval split)")
        predictions, labels = torch.cat(self.predictions), torch.cat(self.labels)
        # the rows were put together already: torchmetrics must not gather again (a process may be alone)
        accuracy = MulticlassAccuracy(num_classes=self.num_labels, average="micro", sync_on_compute=False)
        result = {"accuracy": float(accuracy(predictions, labels))}
        if self.num_labels == 2:
            result["f1"] = float(BinaryF1Score(sync_on_compute=False)(predictions, labels))
        return result

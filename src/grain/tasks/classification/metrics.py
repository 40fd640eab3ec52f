"""Classification metrics: GLUE's (accuracy, plus F1 of the positive class for binary tasks such as
QQP) and those of the user's own data (also macro F1, Matthews, and correlations for regression)."""

from __future__ import annotations

import math
import warnings

import torch
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy

from grain.tasks.gather import GatheredRows


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


# The task.metric choices of the user's own data (TextClassificationEvaluator's metrics).
CLASSIFICATION_METRICS = ("accuracy", "f1", "f1_macro", "matthews")
REGRESSION_METRICS = ("pearson", "spearman")


class TextClassificationEvaluator(GatheredRows):
    """Accumulates one eval split. Classification: `accuracy`, `f1` (of the second label when there are
    two, e.g. "1" or "positive"; macro-averaged over the labels otherwise), `f1_macro`, `matthews`.
    Regression (num_labels 1): `pearson`, `spearman`, `mse`. All from torchmetrics, over the rows
    collected here (every process's after `gather()`)."""

    gathered = ("predictions", "labels")

    def __init__(self, num_labels: int):
        self.regression = num_labels == 1
        self.predictions: list[torch.Tensor] = []  # per batch, CPU: label ids, or floats for regression
        self.labels: list[torch.Tensor] = []
        local = {"sync_on_compute": False}  # rows are gathered before compute (GatheredRows), not by torchmetrics
        if self.regression:
            with warnings.catch_warnings():  # Spearman keeps the split's predictions: one float per row is fine
                warnings.simplefilter("ignore", UserWarning)
                spearman = tmr.SpearmanCorrCoef(**local)
            self.metrics = {
                "pearson": tmr.PearsonCorrCoef(**local),
                "spearman": spearman,
                "mse": tmr.MeanSquaredError(**local),
            }
        else:
            self.metrics = {
                "accuracy": tmc.MulticlassAccuracy(num_classes=num_labels, average="micro", **local),
                "f1": tmc.BinaryF1Score(**local) if num_labels == 2
                else tmc.MulticlassF1Score(num_classes=num_labels, average="macro", **local),
                "f1_macro": tmc.MulticlassF1Score(num_classes=num_labels, average="macro", **local),
                "matthews": tmc.MulticlassMatthewsCorrCoef(num_classes=num_labels, **local),
            }

    def update(self, batch: dict, outputs) -> None:
        labels = batch["labels"].cpu()
        if self.regression:
            predictions = outputs.logits.detach().float().cpu().reshape(-1)
            labels = labels.float().reshape(-1)
        else:
            predictions = outputs.logits.argmax(dim=-1).cpu()
        self.predictions.append(predictions)
        self.labels.append(labels)

    def compute(self) -> dict[str, float]:
        if not self.predictions:
            raise ValueError("TextClassificationEvaluator.compute: no rows were collected (an empty eval split)")
        predictions, labels = torch.cat(self.predictions), torch.cat(self.labels)
        results = {}
        for name, metric in self.metrics.items():
            metric.reset()
            metric.update(predictions, labels)
            value = float(metric.compute())
            results[name] = 0.0 if math.isnan(value) else value  # a constant prediction has no correlation
        return results

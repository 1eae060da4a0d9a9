"""Scoring the global model: accuracy, macro-F1 and per-class precision/recall/F1."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from torch.utils.data import DataLoader, TensorDataset

from residency.common.data.encoding import bert_inputs, trim
from residency.common.device import Compute
from residency.common.head_input import head_features, trained_head


@dataclass(frozen=True)
class ClassScore:
    """Precision, recall and F1 of one label, with its support in the test set."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Scores:
    """Test-set quality of one model."""

    accuracy: float
    macro_f1: float
    loss: float
    per_class: dict[str, ClassScore]


@torch.no_grad()
def predict(
    model: torch.nn.Module, data: TensorDataset, *, compute: Compute, batch_size: int = 64
) -> tuple[np.ndarray, float]:
    """Predicted label indices and mean cross-entropy over ``data``."""
    was_training = model.training
    model.eval()
    model.to(compute.device)
    preds: list[np.ndarray] = []
    total_loss, count = 0.0, 0
    try:
        for input_ids, mask, labels in DataLoader(data, batch_size=batch_size):
            ids, mask = trim(input_ids, mask)
            inputs = bert_inputs(ids.to(compute.device), mask.to(compute.device))
            with compute.autocast():
                logits = model(**inputs).logits.float()
            labels = labels.to(compute.device)
            total_loss += float(
                torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            )
            count += len(labels)
            preds.append(logits.argmax(dim=-1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64), total_loss / max(
        count, 1
    )


def score(
    y_true: np.ndarray, y_pred: np.ndarray, labels: tuple[str, ...], *, loss: float = float("nan")
) -> Scores:
    """Accuracy, macro-F1 and per-class figures for every label of the job."""
    index = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=index, average=None, zero_division=0
    )
    # Macro over the labels that occur (sklearn's default), so a class absent from the test
    # set does not count as a zero.
    _, _, macro_f1, _ = precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0
    )
    per_class = {
        label: ClassScore(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, label in enumerate(labels)
    }
    return Scores(float(accuracy_score(y_true, y_pred)), float(macro_f1), loss, per_class)


def evaluate(
    model: torch.nn.Module, data: TensorDataset, labels: tuple[str, ...], *, compute: Compute
) -> Scores:
    """Score ``model`` on an encoded test set.

    When only the head trains, the frozen encoder's test features are computed once
    (:mod:`residency.common.head_input`) and each round scores just the head on them.
    """
    head = trained_head(model)
    if head is None:
        y_pred, loss = predict(model, data, compute=compute)
    else:
        features = head_features(model, head, data, compute=compute, public=True)
        y_pred, loss = _predict_head(head, features)
    return score(data.tensors[2].numpy(), y_pred, labels, loss=loss)


@torch.no_grad()
def _predict_head(head: torch.nn.Linear, features: TensorDataset) -> tuple[np.ndarray, float]:
    vectors, labels = features.tensors
    logits = head(vectors.to(head.weight.device, head.weight.dtype)).float().cpu()
    loss = (
        float(torch.nn.functional.cross_entropy(logits, labels, reduction="mean"))
        if len(labels)
        else 0.0
    )
    return logits.argmax(dim=-1).numpy(), loss

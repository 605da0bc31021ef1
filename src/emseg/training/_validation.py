"""Validation scores of one epoch: mean IoU, mean F1, loss and one-vs-rest ROC AUC."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from emseg.data import IGNORE_INDEX, LabelledSlices, LabelledVolumes
from emseg.evaluation import EvaluationResult, confusion_matrix

__all__ = ["METRIC_MODES", "mean_auc", "validate", "validation_subset"]

#: ``training.checkpoint_metric`` -> whether larger is better.
METRIC_MODES = {"val_mean_iou": "max", "val_mean_f1": "max", "val_auc": "max", "val_loss": "min"}

#: Labelled pixels drawn per validation slice for the AUC (roc_auc_score sorts them).
AUC_PIXELS_PER_SLICE = 20_000


def mean_auc(probs: np.ndarray, truth: np.ndarray) -> float:
    """Mean one-vs-rest ROC AUC over the classes present (and absent somewhere) in ``truth``.

    Args:
        probs: ``(N, K)`` class probabilities of ``N`` labelled pixels.
        truth: ``(N,)`` class indices.

    Returns:
        The mean of ``roc_auc_score(truth == k, probs[:, k])`` over the classes
        ``k`` that have both positive and negative pixels; NaN if there is none.
    """
    from sklearn.metrics import roc_auc_score

    scores = []
    for k in range(probs.shape[1]):
        positive = truth == k
        if positive.any() and not positive.all():
            scores.append(roc_auc_score(positive, probs[:, k]))
    return float(np.mean(scores)) if scores else float("nan")


def validate(predictor: Any, val: LabelledSlices | LabelledVolumes, *, num_classes: int, background: int | None,
             loss: torch.nn.Module | None = None, weight_maps: list[np.ndarray] | None = None,
             rng: np.random.Generator | None = None, keep: list | None = None
             ) -> tuple[EvaluationResult, dict[str, float]]:
    """Score the validation slices with ``predictor``.

    ``keep``: a list that receives each image's ``(K, ...)`` log-probabilities (for the calibration).

    The loss is the training loss (main head) on each whole slice, computed from
    ``log`` probabilities (softmax of log-probabilities gives the probabilities
    back, so every registered loss accepts them), averaged over slices.

    Returns:
        The :class:`EvaluationResult` and ``{"val_mean_iou", "val_mean_f1", "val_loss", "val_auc"}``.
    """
    rng = rng or np.random.default_rng(0)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    losses, auc_probs, auc_truth = [], [], []
    volumes = isinstance(val, LabelledVolumes)  # 3-D models: whole (Z, Y, X) sub-stacks, 3-D sliding window
    for k, (image, labels) in enumerate(zip(val.images, val.labels)):
        probs = predictor.predict_proba_volume(image) if volumes else predictor.predict_proba_slice(image)
        confusion += confusion_matrix(probs.argmax(0), labels, num_classes=num_classes, ignore_label=IGNORE_INDEX)
        labelled = np.flatnonzero(labels.ravel() != IGNORE_INDEX)
        log_probs = np.log(np.clip(probs, 1e-8, None)) if keep is not None or loss is not None else None
        if keep is not None:
            keep.append(log_probs)
        if loss is not None and labelled.size:
            logits = torch.from_numpy(log_probs)[None]
            target = torch.from_numpy(labels.astype(np.int64))[None]
            wmap = None if weight_maps is None else torch.from_numpy(weight_maps[k])[None]
            with torch.no_grad():
                losses.append(float(loss(logits, target, weight_map=wmap)))
        if labelled.size:
            pick = labelled if labelled.size <= AUC_PIXELS_PER_SLICE else rng.choice(labelled, AUC_PIXELS_PER_SLICE, replace=False)
            auc_probs.append(probs.reshape(num_classes, -1)[:, pick].T)
            auc_truth.append(labels.ravel()[pick])
    result = EvaluationResult.from_confusion(confusion, classes=predictor.classes, background=background)
    scores = {
        "val_mean_iou": result.mean_iou,
        "val_mean_f1": result.mean_f1,
        "val_loss": float(np.mean(losses)) if losses else math.nan,
        "val_auc": mean_auc(np.concatenate(auc_probs), np.concatenate(auc_truth)) if auc_probs else math.nan,
    }
    return result, scores


def validation_subset(val_data: Any, max_slices: int | None) -> Any:
    """The validation data scored per epoch: the first ``training.val_max_slices`` images, or all."""
    return val_data if max_slices is None else val_data.take(list(range(min(len(val_data), max_slices))))

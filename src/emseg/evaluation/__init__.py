"""Scoring segmentations against ground truth: confusion matrices and per-class metrics.

Pixel scores (:func:`evaluate`, :func:`pixel_scores`, :func:`mean_iou`,
:func:`probability_auc`, :func:`threshold_sweep`), ISBI 2012 boundary scores
(:func:`rand_info_scores`, :func:`membrane_scores`), object scores
(:func:`detection_scores`, :func:`object_scores`, :func:`hausdorff_distance`,
:func:`aggregated_jaccard_index`, :func:`panoptic_quality`) and agreement
between annotators (:func:`annotation_agreement`); every group at once with
:func:`score_segmentation` (what ``emseg evaluate --metrics`` runs).

>>> import numpy as np
>>> from emseg.evaluation import evaluate
>>> truth = np.array([[0, 0, 1], [0, 1, 1]])
>>> prediction = np.array([[0, 1, 1], [0, 1, 1]])
>>> result = evaluate(prediction, truth, classes=["background", "mitochondria"])
>>> round(result.per_class["mitochondria"]["iou"], 4)
0.75
"""

from ._agreement import annotation_agreement
from ._boundary import class_rand_info_scores, membrane_scores, membrane_segments, rand_info_scores
from ._complexity import model_complexity
from ._confusion import LabelRangeError, confusion_from_labels, confusion_matrix, f1_from_confusion, iou_from_confusion
from ._metrics import EvaluationResult, evaluate
from ._metrics import _json_safe as json_safe
from ._instances import aggregated_jaccard_index, connected_components, panoptic_quality
from ._objects import detection_scores, hausdorff_distance, object_scores
from ._pixel import mean_iou, pixel_scores, probability_auc, threshold_sweep
from ._suite import METRIC_GROUPS, flatten_scores, parse_metrics, parse_subsets, score_segmentation

__all__ = [
    "METRIC_GROUPS",
    "EvaluationResult",
    "LabelRangeError",
    "aggregated_jaccard_index",
    "annotation_agreement",
    "class_rand_info_scores",
    "confusion_from_labels",
    "confusion_matrix",
    "connected_components",
    "detection_scores",
    "evaluate",
    "f1_from_confusion",
    "flatten_scores",
    "hausdorff_distance",
    "iou_from_confusion",
    "json_safe",
    "mean_iou",
    "membrane_scores",
    "membrane_segments",
    "model_complexity",
    "object_scores",
    "panoptic_quality",
    "parse_metrics",
    "parse_subsets",
    "pixel_scores",
    "probability_auc",
    "rand_info_scores",
    "score_segmentation",
    "threshold_sweep",
]

"""Scoring segmentations against ground truth: confusion matrices and per-class metrics.

>>> import numpy as np
>>> from emseg.evaluation import evaluate
>>> truth = np.array([[0, 0, 1], [0, 1, 1]])
>>> prediction = np.array([[0, 1, 1], [0, 1, 1]])
>>> result = evaluate(prediction, truth, classes=["background", "mitochondria"])
>>> round(result.per_class["mitochondria"]["iou"], 4)
0.75
"""

from ._confusion import confusion_matrix
from ._metrics import EvaluationResult, evaluate

__all__ = ["EvaluationResult", "confusion_matrix", "evaluate"]

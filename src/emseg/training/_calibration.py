"""Per-class logit offsets fitted on the validation slices (decision calibration).

Class-weighted cross-entropy shifts a network's logits by roughly ``log w_k``:
the rare, heavily weighted classes win pixels they should not, most visibly at
the thin interfaces (on EPFL one pixel of the ~4-pixel mitochondrial boundary
ring is ~7 % of the mitochondrion interior's area, and the interior's recall is
below its precision). The Bayes-optimal fix is a constant offset per class, added to the
logits before the argmax. Its best value depends on the metric, so we fit it on
held-out data: coordinate ascent over a grid of offsets, maximising the mean
IoU over classes (the trainer's checkpoint metric) on the validation slices.

Each coordinate step is exact and cheap: with the other offsets fixed, a pixel
goes to class ``k`` iff its margin ``s_k - max_{j != k}(s_j + b_j)`` exceeds
``-b_k``; sorting the margins once turns every candidate ``b_k`` of the grid into a
prefix, so all candidates are scored from one pass of cumulative confusion
counts.

The offsets are stored in the checkpoint (``inference.logit_offsets``) and added
by :class:`~emseg.inference.Predictor` to the logits of every window (so to the
probabilities it writes, too); ``emseg predict --no-calibration`` ignores them.

Opt-in (``training.calibrate: true`` or ``emseg calibrate RUN``): the optimum on
the validation slices transfers only as far as they represent the data. On EPFL
(3 validation slices of the training volume, 5 test slices of another volume)
it raised validation mean IoU from 0.644 to 0.675 but lowered the test mean
foreground IoU from 0.610 to 0.601 (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emseg.data import IGNORE_INDEX
from emseg.evaluation import confusion_from_labels, iou_from_confusion

__all__ = ["Calibration", "fit_logit_offsets", "mean_iou_of_confusions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """Result of :func:`fit_logit_offsets`."""

    offsets: np.ndarray  #: ``(K,)`` float offsets added to the logits (class 0 fixed at 0)
    before: float  #: validation mean IoU without offsets
    after: float  #: validation mean IoU with them (>= before)
    pixels: int  #: labelled pixels used

    def to_dict(self) -> dict:
        return {"logit_offsets": [round(float(o), 4) for o in self.offsets], "val_mean_iou_before": self.before,
                "val_mean_iou_after": self.after, "pixels": self.pixels}


def mean_iou_of_confusions(confusions: np.ndarray) -> np.ndarray:
    """Mean IoU of each ``(..., K, K)`` confusion matrix (rows truth, columns prediction).

    Classes absent from both truth and prediction are left out of the mean (as
    :class:`~emseg.evaluation.EvaluationResult` does); NaN if no class is present.
    """
    iou = iou_from_confusion(np.asarray(confusions, np.float64))
    present = ~np.isnan(iou)
    total = np.where(present, iou, 0.0).sum(-1)
    count = present.sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def fit_logit_offsets(
    scores: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    ignore_label: int = IGNORE_INDEX,
    span: float = 2.0,
    step: float = 0.05,
    sweeps: int = 4,
    max_pixels: int = 4_000_000,
    seed: int = 0,
) -> Calibration:
    """Per-class offsets on the logits that maximise the mean IoU of ``argmax(scores + offsets)``.

    Args:
        scores: per image, ``(K, ...)`` logits or log-probabilities (the same
            offsets fit both: they differ by a per-pixel constant).
        labels: per image, the matching ``(...)`` class indices; ``ignore_label``
            pixels are left out.
        span, step: offsets are searched on the grid ``[-span, span]`` in steps of ``step``.
        sweeps: passes over the classes (coordinate ascent stops early when a pass changes nothing).
        max_pixels: labelled pixels used at most (a fixed random subset beyond that).
        seed: of that subset.

    Returns:
        A :class:`Calibration`; class 0's offset stays 0 (only differences matter). An offset
        moves only when it raises the mean IoU, so ``after >= before``.
    """
    if len(scores) != len(labels) or not len(scores):
        raise ValueError(f"need as many score maps as label images (got {len(scores)} and {len(labels)})")
    k_classes = int(np.asarray(scores[0]).shape[0])
    flat_s, flat_t = [], []
    for s, t in zip(scores, labels):
        s, t = np.asarray(s), np.asarray(t)
        if s.shape[0] != k_classes or s.shape[1:] != t.shape:
            raise ValueError(f"scores {s.shape} do not match labels {t.shape} (expected ({k_classes}, *labels.shape))")
        keep = np.flatnonzero(t.ravel() != ignore_label)
        flat_s.append(s.reshape(k_classes, -1)[:, keep].astype(np.float32))
        flat_t.append(t.ravel()[keep].astype(np.int64))
    s_all = np.concatenate(flat_s, axis=1)
    truth = np.concatenate(flat_t)
    if truth.size and (truth.min() < 0 or truth.max() >= k_classes):
        raise ValueError(f"labels hold values outside 0..{k_classes - 1} (other than ignore_label={ignore_label})")
    if truth.size > max_pixels:
        pick = np.sort(np.random.default_rng(seed).choice(truth.size, max_pixels, replace=False))
        s_all, truth = s_all[:, pick], truth[pick]
    n = truth.size
    offsets = np.zeros(k_classes, np.float64)
    grid = np.round(np.arange(-span, span + step / 2, step), 6)

    def confusion(pred: np.ndarray) -> np.ndarray:
        return confusion_from_labels(pred, truth, num_classes=k_classes)

    shifted = s_all + offsets[:, None].astype(np.float32)
    before = float(mean_iou_of_confusions(confusion(shifted.argmax(0))))
    current = before
    if n == 0 or k_classes < 2:
        return Calibration(offsets, before, before, n)
    for _ in range(max(1, sweeps)):
        moved = False
        for k in range(1, k_classes):
            shifted = s_all + offsets[:, None].astype(np.float32)
            shifted[k] = -np.inf
            other = shifted.argmax(0)
            margin = s_all[k] - shifted[other, np.arange(n)]  # -> class k iff margin + b_k > 0
            order = np.argsort(-margin, kind="stable")
            neg = -margin[order]  # ascending
            to_other = truth[order] * k_classes + other[order]
            to_k = truth[order] * k_classes + k
            base = np.bincount(to_other, minlength=k_classes ** 2)
            ends = np.searchsorted(neg, grid, side="left")  # pixels with margin > -c, per candidate c
            confs = np.empty((grid.size, k_classes ** 2), np.int64)
            cum, start = base.copy(), 0
            for i, end in enumerate(ends):
                if end > start:
                    cum -= np.bincount(to_other[start:end], minlength=k_classes ** 2)
                    cum += np.bincount(to_k[start:end], minlength=k_classes ** 2)
                    start = end
                confs[i] = cum
            values = mean_iou_of_confusions(confs.reshape(-1, k_classes, k_classes))
            best = int(np.nanargmax(values)) if np.isfinite(values).any() else -1
            if best >= 0 and values[best] > current + 1e-6:
                offsets[k], current, moved = float(grid[best]), float(values[best]), True
        if not moved:
            break
    shifted = s_all + offsets[:, None].astype(np.float32)
    after = float(mean_iou_of_confusions(confusion(shifted.argmax(0))))
    if not after >= before:  # exact ties scored for class k above but broken the other way by argmax
        offsets[:], after = 0.0, before
    logger.info("calibration: logit offsets %s; validation mean IoU %.4f -> %.4f (%d pixels)",
                [round(float(o), 2) for o in offsets], before, after, n)
    return Calibration(offsets, before, after, n)

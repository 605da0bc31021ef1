"""Combining members' class probabilities: mean, weighted mean, majority vote; the weight grid search.

Everything here works on probabilities already computed (numpy arrays), so the
weight search scores every candidate weight vector from one cached prediction
per member and never runs a network twice.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from emseg._progress import progress_bar
from emseg.evaluation import confusion_from_labels, iou_from_confusion
from emseg.inference import METHODS, combine_probabilities, majority_vote, vote_probabilities, vote_tie_epsilon
# The combination rule itself is applied at prediction time, so it lives in inference (below ensemble);
# re-exported here, where the weights are chosen.

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "WeightSearch",
    "combine_probabilities",
    "grid_search_weights",
    "majority_vote",
    "mean_iou_from_confusion",
    "score_weights",
    "simplex_grid",
    "vote_probabilities",
    "vote_tie_epsilon",
]

#: Refuse weight grids larger than this (they would take hours); use --top or a coarser step.
MAX_GRID_POINTS = 2_000_000


def simplex_grid(num_members: int, *, step: float = 0.1) -> np.ndarray:
    """Every weight vector with entries in multiples of ``step`` summing to 1.

    There are ``C(n + M - 1, M - 1)`` of them for ``n = 1 / step`` (66 for 3
    members at step 0.1), in lexicographic order of the stars-and-bars bars.

    Returns:
        ``(P, M)`` float64.
    """
    if num_members < 1:
        raise ValueError(f"num_members must be >= 1, got {num_members}")
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    n = round(1.0 / step)
    if abs(n * step - 1.0) > 1e-9:
        raise ValueError(f"step {step} does not divide 1 into equal parts; use e.g. 0.1, 0.05 or 0.25")
    points = math.comb(n + num_members - 1, num_members - 1)
    if points > MAX_GRID_POINTS:
        raise ValueError(f"a weight grid of step {step} over {num_members} members has {points} points (more than "
                         f"{MAX_GRID_POINTS}); keep fewer members (--top) or use a coarser --step")
    rows = np.empty((points, num_members), np.float64)
    for r, bars in enumerate(itertools.combinations(range(n + num_members - 1), num_members - 1)):
        edges = (-1, *bars, n + num_members - 1)
        rows[r] = [edges[i + 1] - edges[i] - 1 for i in range(num_members)]
    return rows / n


def mean_iou_from_confusion(confusion: np.ndarray, *, background: int | None = None,
                            foreground: bool = False) -> float:
    """Mean IoU over the classes present in prediction or truth (as :class:`EvaluationResult`).

    Args:
        confusion: ``(K, K)`` counts, rows = truth.
        background: class left out when ``foreground`` is true.
        foreground: average over the foreground classes only.
    """
    iou = iou_from_confusion(confusion)
    if foreground and background is not None:
        iou = np.delete(iou, background)
    defined = iou[~np.isnan(iou)]
    return float(defined.mean()) if defined.size else math.nan


@dataclass
class WeightSearch:
    """Result of :func:`grid_search_weights`.

    ``weights`` are the chosen weights ``(M,)``; ``score`` their validation
    score; ``grid`` ``(P, M)`` and ``scores`` ``(P,)`` every candidate.
    """

    weights: np.ndarray
    score: float
    grid: np.ndarray
    scores: np.ndarray
    ties: int = 1
    metric: str = "mean_iou"
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))


def score_weights(cache: np.ndarray, truth: np.ndarray, weights: Sequence[float], *, background: int | None = None,
                  foreground: bool = False) -> tuple[float, np.ndarray]:
    """Validation mean IoU of one weighted combination of cached probabilities.

    Args:
        cache: ``(M, K, N)`` member probabilities of ``N`` labelled voxels.
        truth: ``(N,)`` class indices (unlabelled voxels already removed).
        weights: ``(M,)``.

    Returns:
        (score, ``(K, K)`` confusion matrix).
    """
    m, k, n = cache.shape
    combined = np.tensordot(np.asarray(weights, np.float32), cache.reshape(m, k * n), axes=(0, 0)).reshape(k, n)
    confusion = confusion_from_labels(np.argmax(combined, axis=0), truth, num_classes=k)
    return mean_iou_from_confusion(confusion, background=background, foreground=foreground), confusion


def grid_search_weights(cache: np.ndarray, truth: np.ndarray, *, step: float = 0.1, background: int | None = None,
                        foreground: bool = False, progress: bool = False) -> WeightSearch:
    """Find the simplex weights maximising validation mean IoU (WAE-Net's weighted average).

    Every point of :func:`simplex_grid` is scored from the cached member
    probabilities. Among equal best scores the weights closest to equal weights
    win (the least extreme choice), then the first in grid order.

    Args:
        cache: ``(M, K, N)`` float32 member probabilities of ``N`` labelled
            validation voxels (a numpy array or a memory map).
        truth: ``(N,)`` int64 class indices in ``[0, K)``.
        step: grid step (0.1 or finer).
        background: class left out when ``foreground`` is true.
        foreground: maximise the mean over foreground classes instead of all classes.
        progress: show a progress bar (only on a terminal).
    """
    m, k, n = cache.shape
    if truth.shape != (n,):
        raise ValueError(f"truth has shape {truth.shape}; expected ({n},) to match the cached probabilities")
    grid = simplex_grid(m, step=step)
    logger.info("scoring %d weight vectors (step %g) over %d members on %d validation voxels", len(grid), step, m, n)
    scores = np.empty(len(grid))
    with progress_bar("Weights", total=len(grid), unit="vectors", enabled=progress) as advance:
        for i, w in enumerate(grid):
            scores[i], _ = score_weights(cache, truth, w, background=background, foreground=foreground)
            advance(1)
    valid = np.where(np.isnan(scores), -np.inf, scores)
    best = valid.max()
    tied = np.flatnonzero(valid >= best - 1e-12)
    distance = ((grid[tied] - 1.0 / m) ** 2).sum(1)
    choice = int(tied[np.argmin(distance)])
    _, confusion = score_weights(cache, truth, grid[choice], background=background, foreground=foreground)
    return WeightSearch(weights=grid[choice], score=float(scores[choice]), grid=grid, scores=scores, ties=len(tied),
                        metric="mean_iou_foreground" if foreground else "mean_iou", confusion=confusion)

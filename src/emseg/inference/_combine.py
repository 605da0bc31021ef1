"""Combining members' class probabilities: mean, weighted mean, majority vote.

The rule an :class:`~emseg.inference.EnsemblePredictor` applies to its members'
probabilities at prediction time. It lives in inference so that an ensemble
artefact predicts without importing :mod:`emseg.ensemble`, where the members
are trained and the weights searched (:func:`emseg.ensemble.grid_search_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["METHODS", "combine_probabilities", "majority_vote", "vote_probabilities", "vote_tie_epsilon"]

#: Ways of combining members: ``mean`` (equal weights), ``weighted`` (grid-searched
#: weights, WAE-Net) and ``vote`` (per-voxel majority of the members' labels).
METHODS = ("mean", "weighted", "vote")


def _check_members(member_probs: Sequence[np.ndarray]) -> None:
    if len(member_probs) == 0:
        raise ValueError("no member probabilities: an ensemble needs at least one member")
    shape = member_probs[0].shape
    for i, p in enumerate(member_probs):
        if p.shape != shape:
            raise ValueError(f"member {i} gave probabilities of shape {p.shape}, member 0 gave {shape}; "
                             "members must predict the same classes on the same voxels")


def vote_tie_epsilon(num_members: int) -> float:
    """Share of the mean probability mixed into vote fractions: ``1 / (2 (M + 1))``.

    Two classes whose vote counts differ differ by at least ``1 / M`` in vote
    fraction; mixing in ``eps`` times the mean probability (which differs by at
    most 1) cannot reorder them when ``eps < 1 / (M + 1)``, but it does order
    classes with equal counts by their mean probability.
    """
    return 1.0 / (2.0 * (num_members + 1))


def majority_vote(member_probs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel majority of the members' argmax labels.

    Args:
        member_probs: ``M`` arrays of probabilities ``(K, ...)``.

    Returns:
        labels ``(...)`` int64 and vote fractions ``(K, ...)`` float32 (the share of
        members voting for each class). Ties between classes with the same number
        of votes go to the class with the highest mean probability over the
        members; a tie in that too goes to the lowest class index.
    """
    _check_members(member_probs)
    counts, mean = _vote_counts(member_probs)
    m = len(member_probs)
    eps = vote_tie_epsilon(m)
    labels = np.argmax((1.0 - eps) * counts / m + eps * mean / m, axis=0)
    return labels, (counts / m).astype(np.float32)


def _vote_counts(member_probs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Votes per class ``(K, ...)`` and the summed probabilities ``(K, ...)``."""
    k = member_probs[0].shape[0]
    counts = np.zeros(member_probs[0].shape, np.float32)
    total = np.zeros(member_probs[0].shape, np.float32)
    index = np.arange(k).reshape((k,) + (1,) * (member_probs[0].ndim - 1))
    for p in member_probs:
        counts += np.argmax(p, axis=0)[None] == index
        total += p
    return counts, total


def vote_probabilities(member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """The vote's "probabilities": ``(1 - eps) * vote fraction + eps * mean probability``.

    ``eps`` is :func:`vote_tie_epsilon` (``1 / (2 (M + 1))``), small enough that
    the argmax is exactly the majority label with ties broken by mean
    probability (see :func:`majority_vote`), and the values still sum to 1 over
    the classes, so ``argmax`` everywhere (predict, evaluate) gives the vote.

    Args:
        member_probs: ``M`` arrays ``(K, ...)``.

    Returns:
        ``(K, ...)`` float32.
    """
    _check_members(member_probs)
    m = len(member_probs)
    counts, total = _vote_counts(member_probs)
    eps = vote_tie_epsilon(m)
    return ((1.0 - eps) * counts / m + eps * total / m).astype(np.float32)


def combine_probabilities(member_probs: Sequence[np.ndarray], *, method: str = "mean",
                          weights: Sequence[float] | None = None) -> np.ndarray:
    """Combine the members' probabilities of the same voxels.

    Args:
        member_probs: ``M`` arrays ``(K, ...)`` of class probabilities.
        method: ``"mean"`` (equal weights), ``"weighted"`` (``sum_m w_m p_m``
            with ``weights`` normalised to sum 1) or ``"vote"``
            (:func:`vote_probabilities`).
        weights: ``M`` non-negative weights (``weighted`` only; ``mean`` and
            ``vote`` ignore them).

    Returns:
        ``(K, ...)`` float32 probabilities summing to 1 over ``K``.
    """
    _check_members(member_probs)
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "vote":
        return vote_probabilities(member_probs)
    m = len(member_probs)
    w = np.full(m, 1.0 / m) if method == "mean" or weights is None else _normalise(weights, m)
    out = np.zeros(member_probs[0].shape, np.float32)
    for wi, p in zip(w, member_probs):
        if wi:
            out += np.float32(wi) * p
    return out


def _normalise(weights: Sequence[float], m: int) -> np.ndarray:
    w = np.asarray(weights, np.float64)
    if w.shape != (m,):
        raise ValueError(f"weights: expected {m} values (one per member), got {list(np.ravel(w))}")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative, finite and not all 0; got {w.tolist()}")
    return w / w.sum()

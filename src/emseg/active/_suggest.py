"""Which slices (or blocks) to label next: uncertainty of a model or an ensemble, ranked.

Three measures, all per pixel and averaged over a slice (or an in-plane block):

``disagreement``
    Ensembles: the mutual information between the prediction and the member
    (BALD): ``H(mean_m p_m) - mean_m H(p_m)``, in nats. Zero where the members
    agree, whatever their confidence; high where each member is sure but they
    disagree.
``entropy``
    The entropy of the (combined) mean probability ``H(p) = -sum_k p_k log p_k``,
    in nats; ``log K`` where the model is at chance.
``tta``
    A single model: the variance of the class probabilities over the four
    test-time flips (:data:`emseg.inference._predictor.TTA_FLIPS`: identity, x,
    y, both), summed over the classes.

``auto`` takes ``disagreement`` for an ensemble of two or more members and
``tta`` otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from emseg.data import parse_slices
from emseg.inference import EnsemblePredictor, member_probabilities

logger = logging.getLogger(__name__)

__all__ = ["SUGGEST_METHODS", "Suggestion", "iter_uncertainty", "rank_blocks", "resolve_method", "suggest_slices",
           "uncertainty_map"]

#: The uncertainty measures :func:`suggest_slices` understands.
SUGGEST_METHODS = ("auto", "disagreement", "entropy", "tta")

#: Flips of a ``(..., Y, X)`` slice for the ``tta`` measure (axes of the slice): identity, x, y, both.
_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
_EPS = 1e-12


@dataclass(frozen=True)
class Suggestion:
    """One slice (or block) to label next, with its uncertainty score.

    Attributes:
        z: slice index in the image.
        score: mean per-pixel uncertainty of the slice or block (see the module docstring for units).
        y, x: ``(start, stop)`` pixel rows and columns of the block (the whole slice when no block was asked).
        method: the measure used.
    """

    z: int
    score: float
    y: tuple[int, int]
    x: tuple[int, int]
    method: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"z", "score", "y": [start, stop], "x": [start, stop], "method"}``."""
        d = asdict(self)
        d["y"], d["x"] = list(self.y), list(self.x)
        return d


def _entropy(p: np.ndarray) -> np.ndarray:
    """``(K, ...)`` probabilities -> ``(...)`` entropy in nats (0 log 0 = 0)."""
    p = np.asarray(p, np.float64)
    return -(p * np.log(np.clip(p, _EPS, None))).sum(axis=0)


def uncertainty_map(probs: Sequence[np.ndarray], method: str) -> np.ndarray:
    """Per-pixel uncertainty of one slice from a set of probability maps.

    Args:
        probs: ``M`` arrays ``(K, Y, X)``: the members of an ensemble (``disagreement``, ``entropy``) or the
            predictions of the flipped slice flipped back (``tta``); ``entropy`` of one model takes ``M = 1``.
        method: ``"disagreement"``, ``"entropy"`` or ``"tta"``.

    Returns:
        ``(Y, X)`` float64: mutual information (nats), entropy of the mean (nats) or the variance over the
        ``M`` maps summed over classes.
    """
    stack = np.stack([np.asarray(p, np.float64) for p in probs])  # (M, K, Y, X)
    mean = stack.mean(axis=0)
    if method == "entropy":
        return _entropy(mean)
    if method == "disagreement":
        return np.clip(_entropy(mean) - np.mean([_entropy(p) for p in stack], axis=0), 0.0, None)
    if method == "tta":
        return stack.var(axis=0).sum(axis=0)
    raise ValueError(f"method must be one of {', '.join(SUGGEST_METHODS[1:])}, got {method!r}")


def resolve_method(predictor: Any, method: str) -> str:
    """The measure ``method`` means for ``predictor`` (``auto``: disagreement for ensembles, else tta).

    Raises:
        ValueError: an unknown method, or ``disagreement`` asked of a single model.
    """
    if method not in SUGGEST_METHODS:
        raise ValueError(f"--method {method!r} is not one of {', '.join(SUGGEST_METHODS)}")
    members = getattr(predictor, "members", None) if isinstance(predictor, EnsemblePredictor) else None
    if method == "auto":
        return "disagreement" if members is not None and len(members) > 1 else "tta"
    if method == "disagreement" and (members is None or len(members) < 2):
        raise ValueError("--method disagreement needs an ensemble of two or more members (an `emseg ensemble` "
                         "run or model.pt); for a single model use --method tta or --method entropy")
    return method


def _flipped_probabilities(predictor: Any, image: np.ndarray) -> list[np.ndarray]:
    """The model's probabilities of ``image`` and of its flips, each flipped back: 4 arrays ``(K, Y, X)``."""
    out = []
    for dims in _FLIPS:
        flipped = np.ascontiguousarray(np.flip(image, dims)) if dims else image
        p = np.asarray(predictor.predict_proba_slice(flipped))
        out.append(np.flip(p, dims) if dims else p)
    return out


def iter_uncertainty(predictor: Any, volume: Any, *, method: str = "auto",
                     slices: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(z, (Y, X) uncertainty map)`` for each slice of a raw ``(Z, Y, X)`` volume.

    One slice at a time, so a caller can show progress or stop between slices (the napari widget).
    ``predictor``: any :class:`~emseg.inference.SegmentationPredictor`, loaded without test-time
    augmentation (``tta`` flips the slices itself).
    """
    method = resolve_method(predictor, method)
    zs = list(range(volume.shape[0])) if slices is None else [int(z) for z in slices]
    if getattr(predictor, "tta", False) and method == "tta":
        raise ValueError("load the model without test-time augmentation (tta=False): the tta measure flips "
                         "the slices itself")
    context = int(getattr(predictor, "context_slices", 1))
    members = list(predictor.members) if isinstance(predictor, EnsemblePredictor) else [predictor]
    dims = list(getattr(predictor, "member_dims", [getattr(m, "spatial_dims", 2) for m in members]))
    volumetric: dict[int, np.ndarray] = {}
    for z in zs:
        if method == "disagreement":
            probs = []
            for i, (member, d) in enumerate(zip(members, dims)):
                if d == 3 or getattr(member, "spatial_dims", 2) == 3:  # a 3-D member predicts the volume once
                    if i not in volumetric:
                        volumetric[i] = member_probabilities(member, volume, range(volume.shape[0]), spatial_dims=3)
                    probs.append(volumetric[i][:, z])
                else:
                    probs.append(member_probabilities(member, volume, [z], spatial_dims=d)[:, 0])
        else:
            if predictor.spatial_dims == 3:
                raise ValueError(f"--method {method} ranks slices of 2-D models; a 3-D model needs "
                                 "--method disagreement (an ensemble)")
            image = np.asarray(volume[z]) if context == 1 else _context(volume, z, context)
            probs = (_flipped_probabilities(predictor, image) if method == "tta"
                     else [np.asarray(predictor.predict_proba_slice(image))])
        yield z, uncertainty_map(probs, method)


def _context(volume: Any, z: int, context: int) -> np.ndarray:
    """``(C, Y, X)`` slices centred on ``z``, edges repeated (as the predictors read them)."""
    half = context // 2
    idx = np.clip(np.arange(z - half, z + half + 1), 0, volume.shape[0] - 1)
    return np.stack([np.asarray(volume[int(i)]) for i in idx])


def rank_blocks(maps: dict[int, np.ndarray], *, method: str, k: int, block: tuple[int, int] | None = None
                ) -> list[Suggestion]:
    """The ``k`` slices (or ``block``-sized tiles) of highest mean uncertainty, best first.

    Args:
        maps: ``{z: (Y, X) uncertainty}``.
        block: ``(by, bx)`` in-plane tile; None ranks whole slices. Edge tiles are smaller.
        k: how many to return (all if fewer). Ties: the lower z (then y, x) first.
    """
    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    if block is not None and (len(block) != 2 or min(block) < 1):
        raise ValueError(f"--block must be two positive sizes Y X, got {block}")
    found = []
    for z, m in maps.items():
        ny, nx = m.shape
        by, bx = block if block is not None else (ny, nx)
        for y0 in range(0, ny, by):
            for x0 in range(0, nx, bx):
                tile = m[y0:y0 + by, x0:x0 + bx]
                found.append(Suggestion(int(z), float(tile.mean()), (y0, min(ny, y0 + by)), (x0, min(nx, x0 + bx)),
                                        method))
    found.sort(key=lambda s: (-s.score, s.z, s.y[0], s.x[0]))
    return found[:k]


def suggest_slices(predictor: Any, volume: Any, *, k: int = 5, method: str = "auto",
                   block: tuple[int, int] | None = None, exclude: str | Sequence[int] | None = None,
                   progress: Callable[[int], None] | None = None) -> list[Suggestion]:
    """Rank the slices (or blocks) of ``volume`` by the model's uncertainty; the top ``k``, best first.

    Args:
        predictor: a :class:`~emseg.inference.SegmentationPredictor` (an ensemble for ``disagreement``),
            loaded without test-time augmentation.
        volume: raw ``(Z, Y, X)`` intensities (lazy arrays are read one slice at a time).
        k: number of suggestions.
        method: one of :data:`SUGGEST_METHODS`.
        block: ``(by, bx)``: rank in-plane tiles of this size instead of whole slices.
        exclude: slices not to suggest (already labelled): indices, or a selection such as ``"0:3,7"``.
        progress: called with 1 after each slice.

    Returns:
        Up to ``k`` :class:`Suggestion` objects, highest score first.
    """
    depth = int(volume.shape[0])
    skip = set(parse_slices(exclude, depth)) if isinstance(exclude, str) else {int(z) for z in (exclude or ())}
    zs = [z for z in range(depth) if z not in skip]
    if not zs:
        raise ValueError(f"every slice of the image is excluded ({depth} slices): nothing left to suggest")
    method = resolve_method(predictor, method)
    maps = {}
    for z, m in iter_uncertainty(predictor, volume, method=method, slices=zs):
        maps[z] = m
        if progress is not None:
            progress(1)
    suggestions = rank_blocks(maps, method=method, k=k, block=block)
    logger.info("ranked %d slices by %s; top: %s", len(zs), method,
                ", ".join(f"z={s.z} ({s.score:.4g})" for s in suggestions[: min(k, 5)]))
    return suggestions


"""Active learning: which slices to label next, user corrections as training data, fine-tuning rounds.

>>> from emseg.active import suggest_slices
>>> from emseg.inference import load_predictor
>>> suggest_slices(load_predictor("runs/ens"), volume, k=5)        # doctest: +SKIP
[Suggestion(z=12, score=0.31, ...), ...]

The napari plugin (:mod:`emseg.napari`) and ``emseg suggest`` are thin layers over this package.
"""

from emseg.active._session import DEFAULT_IGNORE_LABEL, ActiveSession
from emseg.active._suggest import (
    SUGGEST_METHODS,
    Suggestion,
    iter_uncertainty,
    rank_blocks,
    resolve_method,
    suggest_slices,
    uncertainty_map,
)

__all__ = [
    "DEFAULT_IGNORE_LABEL",
    "ActiveSession",
    "SUGGEST_METHODS",
    "Suggestion",
    "iter_uncertainty",
    "rank_blocks",
    "resolve_method",
    "suggest_slices",
    "uncertainty_map",
]

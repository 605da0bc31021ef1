"""Ensembles: seed and architecture ensembles, weighting, voting, k-fold cross-validation.

>>> from emseg.ensemble import train_seeds, build_ensemble
>>> runs = train_seeds("train.yaml", "runs/seeds", seeds=[0, 1, 2, 3])          # doctest: +SKIP
>>> build_ensemble(runs.top(3), "runs/ens", method="weighted")                  # doctest: +SKIP
>>> from emseg.inference import Predictor
>>> Predictor.from_checkpoint("runs/ens")   # an EnsemblePredictor, used like one model  # doctest: +SKIP
"""

from emseg.ensemble._build import (
    EnsembleResult,
    ValidationSource,
    build_ensemble,
    ensemble_checkpoint,
    expand_members,
    load_members,
    split_ensembles,
)
from emseg.ensemble._combine import (
    METHODS,
    WeightSearch,
    combine_probabilities,
    grid_search_weights,
    majority_vote,
    mean_iou_from_confusion,
    score_weights,
    simplex_grid,
    vote_probabilities,
    vote_tie_epsilon,
)
from emseg.ensemble._runs import FoldsResult, SeedsResult, run_scores, train_folds, train_once, train_seeds
from emseg.ensemble._splits import FOLD_SPLITS, fold_configs, format_slices, freeze_validation_split, training_slices
from emseg.inference import EnsemblePredictor, member_probabilities  # the predictor lives in inference (its docstring says why)

__all__ = [
    "FOLD_SPLITS",
    "METHODS",
    "EnsemblePredictor",
    "EnsembleResult",
    "FoldsResult",
    "SeedsResult",
    "ValidationSource",
    "WeightSearch",
    "build_ensemble",
    "combine_probabilities",
    "ensemble_checkpoint",
    "expand_members",
    "fold_configs",
    "format_slices",
    "freeze_validation_split",
    "grid_search_weights",
    "load_members",
    "majority_vote",
    "mean_iou_from_confusion",
    "member_probabilities",
    "run_scores",
    "score_weights",
    "simplex_grid",
    "split_ensembles",
    "train_folds",
    "train_once",
    "train_seeds",
    "training_slices",
    "vote_probabilities",
    "vote_tie_epsilon",
]

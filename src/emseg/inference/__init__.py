"""Prediction: sliding-window segmentation of slices, stacks and volumes.

:func:`load_predictor` turns a model file (a run, an ensemble, an export) into a predictor;
every predictor satisfies :class:`SegmentationPredictor`, what the blockwise engine,
evaluation and Grad-CAM use.
"""

from emseg.inference._blockwise import BlockLayout, ResumeError, predict_blockwise
from emseg.inference._combine import (
    METHODS,
    combine_probabilities,
    majority_vote,
    vote_probabilities,
    vote_tie_epsilon,
)
from emseg.inference._ensemble import EnsemblePredictor, member_probabilities
from emseg.inference._predict import predict
from emseg.inference._predictor import Predictor, load_predictor
from emseg.inference._protocol import SegmentationPredictor
from emseg.inference._route import AGREEMENT_THRESHOLD, Route
from emseg.inference._route import describe as describe_route
from emseg.inference._run_state import read_run_metadata

__all__ = [
    "AGREEMENT_THRESHOLD",
    "METHODS",
    "BlockLayout",
    "EnsemblePredictor",
    "Predictor",
    "ResumeError",
    "Route",
    "SegmentationPredictor",
    "combine_probabilities",
    "describe_route",
    "load_predictor",
    "majority_vote",
    "member_probabilities",
    "predict",
    "predict_blockwise",
    "read_run_metadata",
    "vote_probabilities",
    "vote_tie_epsilon",
]

"""Prediction: sliding-window segmentation of slices, stacks and volumes.

:func:`load_predictor` turns a model file (a run, an ensemble, an export) into a predictor;
every predictor satisfies :class:`SegmentationPredictor`, what the blockwise engine,
evaluation and Grad-CAM use. :func:`load_exported` runs a file written by :mod:`emseg.export`
(``.onnx``, bioimage.io ``.zip``); :func:`read_metadata` and :func:`model_classes` read it.
"""

from emseg.inference._batch import BatchItem, batch_pairs, is_batch, predict_many
from emseg.inference._blockwise import BlockLayout, ResumeError, predict_blockwise
from emseg.inference._combine import (
    METHODS,
    combine_probabilities,
    majority_vote,
    vote_probabilities,
    vote_tie_epsilon,
)
from emseg.inference._ensemble import EnsemblePredictor, member_probabilities
from emseg.inference._exported import (
    OnnxNetwork,
    is_exported,
    load_exported,
    model_classes,
    onnx_session,
    read_metadata,
    read_onnx_metadata,
)
from emseg.inference._predict import predict
from emseg.inference._postprocess import majority_filter, postprocess_labels, remove_small_objects
from emseg.inference._predictor import Predictor, load_predictor
from emseg.inference._protocol import SegmentationPredictor
from emseg.inference._route import AGREEMENT_THRESHOLD, Route
from emseg.inference._route import describe as describe_route
from emseg.inference._run_state import read_run_metadata

__all__ = [
    "AGREEMENT_THRESHOLD",
    "METHODS",
    "BatchItem",
    "BlockLayout",
    "EnsemblePredictor",
    "OnnxNetwork",
    "Predictor",
    "ResumeError",
    "Route",
    "SegmentationPredictor",
    "batch_pairs",
    "combine_probabilities",
    "is_batch",
    "is_exported",
    "load_exported",
    "describe_route",
    "load_predictor",
    "majority_filter",
    "majority_vote",
    "member_probabilities",
    "model_classes",
    "onnx_session",
    "postprocess_labels",
    "predict",
    "predict_blockwise",
    "predict_many",
    "read_metadata",
    "read_onnx_metadata",
    "read_run_metadata",
    "remove_small_objects",
    "vote_probabilities",
    "vote_tie_epsilon",
]

"""Prediction: sliding-window segmentation of slices, stacks and volumes."""

from emseg.inference._blockwise import BlockLayout, ResumeError, predict_blockwise
from emseg.inference._predict import predict
from emseg.inference._predictor import Predictor

__all__ = ["BlockLayout", "Predictor", "ResumeError", "predict", "predict_blockwise"]

"""Losses, the trainer and self-describing checkpoints."""

from emseg.training._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from emseg.training._losses import DiceCELoss
from emseg.training._trainer import TrainResult, class_weights_from_frequencies, train

__all__ = [
    "CheckpointError",
    "DiceCELoss",
    "TrainResult",
    "class_weights_from_frequencies",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]

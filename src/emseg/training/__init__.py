"""Losses, the trainer and self-describing checkpoints."""

from emseg.losses import LOSSES, DiceCELoss, build_loss
from emseg.models import CheckpointError, load_checkpoint, save_checkpoint
from emseg.training._propagate import PropagationResult, next_sections, propagate
from emseg.training._recipes import apply_recipe, list_recipes
from emseg.training._run_dir import RunWriteError
from emseg.training._trainer import TrainingInterrupted, TrainResult, calibrate, class_weights_from_frequencies, train

__all__ = [
    "CheckpointError",
    "DiceCELoss",
    "LOSSES",
    "PropagationResult",
    "apply_recipe",
    "build_loss",
    "list_recipes",
    "RunWriteError",
    "TrainResult",
    "TrainingInterrupted",
    "calibrate",
    "class_weights_from_frequencies",
    "load_checkpoint",
    "next_sections",
    "propagate",
    "save_checkpoint",
    "train",
]

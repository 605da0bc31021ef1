"""Losses, the trainer and self-describing checkpoints."""

from emseg.config import apply_recipe, list_recipes
from emseg.losses import LOSSES, DiceCELoss, build_loss
from emseg.models import CheckpointError, load_checkpoint, save_checkpoint
from emseg.training._inputs import write_weight_maps
from emseg.training._propagate import PropagationResult, next_sections, propagate
from emseg.training._run_dir import LAST_FILENAME, RunWriteError
from emseg.training._trainer import TrainingInterrupted, TrainResult, calibrate, class_weights_from_frequencies, train

__all__ = [
    "CheckpointError",
    "LAST_FILENAME",
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
    "write_weight_maps",
]

"""Losses, the trainer and self-describing checkpoints."""

from emseg.config import apply_recipe, list_recipes
from emseg.losses import LOSSES, DiceCELoss, build_loss
from emseg.models import CheckpointError, load_checkpoint, save_checkpoint
from emseg.training._inputs import write_weight_maps
from emseg.training._propagate import PropagationResult, next_sections, propagate
from emseg.training._calibrate import calibrate
from emseg.training._callbacks import StopOnEvent, StopWhen
from emseg.training._loop import Callback, LoopState, TrainingLoop
from emseg.training._result import TrainingInterrupted, TrainResult
from emseg.training._run_dir import LAST_FILENAME, RunWriteError, prepare_run_dir
from emseg.training._setup import class_weights_from_frequencies, start_run
from emseg.training._trainer import train

__all__ = [
    "Callback",
    "CheckpointError",
    "LAST_FILENAME",
    "DiceCELoss",
    "LOSSES",
    "LoopState",
    "PropagationResult",
    "apply_recipe",
    "build_loss",
    "list_recipes",
    "RunWriteError",
    "StopOnEvent",
    "StopWhen",
    "TrainResult",
    "TrainingLoop",
    "TrainingInterrupted",
    "calibrate",
    "class_weights_from_frequencies",
    "load_checkpoint",
    "next_sections",
    "prepare_run_dir",
    "propagate",
    "save_checkpoint",
    "start_run",
    "train",
    "write_weight_maps",
]

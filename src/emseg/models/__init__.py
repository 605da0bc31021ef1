"""Network registry and builders.

>>> from emseg.models import MODELS, build_model
>>> "unet2d" in MODELS
True
>>> net = build_model("unet2d", in_channels=1, num_classes=3, options={"features": [8, 16]})
"""

from __future__ import annotations

from emseg.models._registry import (
    MODELS,
    ModelOptions,
    ModelSpec,
    build_model,
    load_pretrained,
    validate_model_options,
)
from emseg.models._zoo import lite0_weights_path  # importing it registers every network in MODELS

#: Names of emseg.models._checkpoint (imports torch: loaded on first use); its __all__.
_CHECKPOINT_NAMES = (
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "DEFAULT_DIVISOR",
    "DEFAULT_OVERLAP",
    "DEFAULT_WINDOW",
    "DEFAULT_WINDOW_3D",
    "ENSEMBLE_BACKEND",
    "MODEL_FILENAME",
    "CheckpointError",
    "inference_defaults",
    "load_checkpoint",
    "rebuild_network",
    "resolve_model_path",
    "save_checkpoint",
)
#: Networks composed around registry networks (emseg.models._composite, imports torch).
_COMPOSITE_NAMES = ("EnsembleNetwork", "SingleNetwork", "network_from_metadata", "skeleton")

#: Starting a network from another checkpoint's weights (model.init) and the pretraining checkpoint format.
_INIT_NAMES = (
    "PRETRAINED_FILENAME",
    "PRETRAINED_FORMAT",
    "InitReport",
    "check_initialisation",
    "class_dependent_keys",
    "initialise_network",
    "load_init_checkpoint",
    "save_pretrained_checkpoint",
)

__all__ = [
    *_CHECKPOINT_NAMES,
    *_COMPOSITE_NAMES,
    *_INIT_NAMES,
    "MODELS",
    "ModelOptions",
    "ModelSpec",
    "RandomForestSegmenter",
    "UNet",
    "build_model",
    "count_flops",
    "count_parameters",
    "lite0_weights_path",
    "load_encoder_weights",
    "load_pretrained",
    "model_cost",
    "model_divisor",
    "validate_model_options",
]


def model_divisor(model, default: int = 16) -> int:
    """The spatial multiple a network's input must have: its ``divisor`` (largest axis), else ``default``."""
    divisor = getattr(model, "divisor", None)
    if divisor is None:
        return default
    return int(max(divisor)) if isinstance(divisor, (tuple, list)) else int(divisor)


def count_parameters(model) -> int:
    """Number of trainable parameters of a torch module."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def __getattr__(name: str):  # lazy heavy imports
    if name in _CHECKPOINT_NAMES:  # emseg.models._checkpoint imports torch
        from emseg.models import _checkpoint

        return getattr(_checkpoint, name)
    if name in _COMPOSITE_NAMES:
        from emseg.models import _composite

        return getattr(_composite, name)
    if name in _INIT_NAMES:
        from emseg.models import _init

        return getattr(_init, name)
    if name == "UNet":
        from emseg.models._unet import UNet

        return UNet
    if name in ("count_flops", "model_cost"):
        from emseg.models import _flops

        return getattr(_flops, name)
    if name == "load_encoder_weights":
        from emseg.models._encoder_weights import load_encoder_weights

        return load_encoder_weights
    if name == "RandomForestSegmenter":
        from emseg.models._random_forest import RandomForestSegmenter

        return RandomForestSegmenter
    raise AttributeError(name)

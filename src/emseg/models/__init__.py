"""Network registry and builders.

>>> from emseg.models import MODELS, build_model
>>> "unet2d" in MODELS
True
>>> net = build_model("unet2d", in_channels=1, num_classes=3, options={"features": [8, 16]})
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from emseg.models._registry import MODELS, ModelOptions, ModelSpec, build_model, validate_model_options

__all__ = [
    "MODELS",
    "ModelOptions",
    "ModelSpec",
    "RandomForestSegmenter",
    "UNet",
    "build_model",
    "count_parameters",
    "validate_model_options",
]


class UNet2dOptions(ModelOptions):
    features: list[int] = Field(default=[16, 32, 64, 128, 256], min_length=2)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    norm: Literal["batch", "instance", "none"] = "batch"
    act: Literal["relu", "prelu", "leakyrelu"] = "relu"


def _build_unet2d(in_channels: int, num_classes: int, opts: UNet2dOptions):
    from emseg.models._unet import UNet

    return UNet(
        in_channels,
        num_classes,
        spatial_dims=2,
        features=tuple(opts.features),
        dropout=opts.dropout,
        norm=None if opts.norm == "none" else opts.norm,
        act=opts.act,
    )


class RandomForestOptions(ModelOptions):
    sigmas: list[float] = Field(default=[0.7, 1.0, 1.6, 3.5, 5.0, 10.0], min_length=1)
    n_estimators: int = Field(default=100, ge=1)
    max_depth: int | None = Field(default=None, ge=1)
    samples_per_class: int = Field(default=20000, ge=10)


def _build_random_forest(in_channels: int, num_classes: int, opts: RandomForestOptions):
    from emseg.models._random_forest import RandomForestSegmenter

    if in_channels != 1:
        raise ValueError(f"model 'random-forest' takes 1 input channel, got {in_channels}")
    return RandomForestSegmenter(
        sigmas=tuple(opts.sigmas),
        n_estimators=opts.n_estimators,
        max_depth=opts.max_depth,
        samples_per_class=opts.samples_per_class,
    )


MODELS.register(
    "unet2d",
    ModelSpec(
        "unet2d",
        "2D U-Net (same padding, batch norm, optional dropout in the deepest block) on MONAI blocks",
        UNet2dOptions,
        _build_unet2d,
    ),
)
MODELS.register(
    "random-forest",
    ModelSpec(
        "random-forest",
        "ilastik-style pixel classifier: multiscale filter features + scikit-learn random forest",
        RandomForestOptions,
        _build_random_forest,
        backend="random-forest",
    ),
)


def count_parameters(model) -> int:
    """Number of trainable parameters of a torch module."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def __getattr__(name: str):  # lazy heavy imports
    if name == "UNet":
        from emseg.models._unet import UNet

        return UNet
    if name == "RandomForestSegmenter":
        from emseg.models._random_forest import RandomForestSegmenter

        return RandomForestSegmenter
    raise AttributeError(name)

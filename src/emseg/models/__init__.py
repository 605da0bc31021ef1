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


# -- 3-D, anisotropic and valid-padding networks ------------------------------------------


class UNet3dOptions(ModelOptions):
    features: list[int] = Field(default=[16, 32, 64, 128], min_length=2)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    norm: Literal["batch", "instance", "none"] = "batch"
    act: Literal["relu", "prelu", "leakyrelu"] = "relu"


def _unet3d_builder(pool_size: tuple[int, int, int]):
    def build(in_channels: int, num_classes: int, opts: UNet3dOptions):
        from emseg.models._unet3d import UNet3d

        return UNet3d(in_channels, num_classes, features=tuple(opts.features), dropout=opts.dropout,
                      kernel_size=3, pool_size=pool_size, norm=None if opts.norm == "none" else opts.norm,
                      act=opts.act)

    return build


class Hybrid2d3dOptions(ModelOptions):
    features: list[int] = Field(default=[32, 64, 128, 256], min_length=2)
    features_3d: int | None = Field(default=None, ge=1)
    use_3x3x3: bool = True
    multi_loss: bool = True
    pyramid: bool = True
    c2d: float = Field(default=0.33, ge=0.0)
    norm: Literal["batch", "instance", "none"] = "batch"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


def _build_hybrid2d3d(in_channels: int, num_classes: int, opts: Hybrid2d3dOptions):
    from emseg.models._hybrid import Hybrid2d3d

    return Hybrid2d3d(in_channels, num_classes, features=tuple(opts.features), features_3d=opts.features_3d,
                      use_3x3x3=opts.use_3x3x3, multi_loss=opts.multi_loss, pyramid=opts.pyramid, c2d=opts.c2d,
                      norm=None if opts.norm == "none" else opts.norm, dropout=opts.dropout)


class UNetOriginalOptions(ModelOptions):
    features: list[int] = Field(default=[64, 128, 256, 512, 1024], min_length=2)
    norm: Literal["batch", "instance", "none"] = "none"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


def _build_unet_original(in_channels: int, num_classes: int, opts: UNetOriginalOptions):
    from emseg.models._unet_original import ValidUNet

    return ValidUNet(in_channels, num_classes, features=tuple(opts.features),
                     norm=None if opts.norm == "none" else opts.norm, dropout=opts.dropout)


MODELS.register(
    "unet3d-thin",
    ModelSpec(
        "unet3d-thin",
        "3D U-Net for anisotropic stacks: 3x3x3 convolutions, 1x2x2 pooling (none along z); 5x256x256 windows",
        UNet3dOptions,
        _unet3d_builder((1, 2, 2)),
        spatial_dims=3,
        default_patch=(5, 256, 256),
    ),
)
MODELS.register(
    "unet3d-thick",
    ModelSpec(
        "unet3d-thick",
        "3D U-Net for isotropic volumes: 3x3x3 convolutions, 2x2x2 pooling along all axes; 16x128x128 windows",
        UNet3dOptions,
        _unet3d_builder((2, 2, 2)),
        spatial_dims=3,
        default_patch=(16, 128, 128),
    ),
)
MODELS.register(
    "hybrid2d3d",
    ModelSpec(
        "hybrid2d3d",
        "Guay et al. 2D-3D+3x3x3 network: 1x3x3 U-Net with 3x3x3 first convolutions, 2D head, 3D pyramid, "
        "3D head; 5x256x256 windows",
        Hybrid2d3dOptions,
        _build_hybrid2d3d,
        spatial_dims=3,
        default_patch=(5, 256, 256),
    ),
)
MODELS.register(
    "unet-original",
    ModelSpec(
        "unet-original",
        "Ronneberger's valid-padding U-Net (unpadded convolutions, crop-and-concat skips; 572 -> 388 windows)",
        UNetOriginalOptions,
        _build_unet_original,
        valid_padding=True,
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

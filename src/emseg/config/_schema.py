"""The pydantic models of a training configuration (``train.yaml``, example in :mod:`emseg.config`).

Unknown keys and wrong types are rejected; data paths must exist; relative paths resolve against the
configuration file's folder (the validation context's ``base_dir``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from emseg._registry import suggest
from emseg.io import resolve_location
from emseg.models import MODELS, validate_model_options

__all__ = [
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "SemiSupervisedConfig",
    "PreprocessConfig",
    "RootConfig",
    "TrainingConfig",
    "UnlabelledSource",
    "VolumeSource",
    "parse_route",
    "resolve_config_path",
]


class ConfigError(ValueError):
    """A configuration problem; the message names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def resolve_config_path(value: str, info: ValidationInfo) -> str:
    """A path of a configuration, user folder expanded, relative ones against the validation context's
    ``base_dir`` (the folder of the YAML file)."""
    base = (info.context or {}).get("base_dir")
    text = os.path.expanduser(str(value))
    if base is not None and not os.path.isabs(text):
        text = os.path.join(base, text)
    return text


_ROUTE_RE = re.compile(r"(fp32|bf16)(-cl)?(-compile)?(-t([1-9][0-9]*))?")


def parse_route(name: str) -> dict[str, Any]:
    """A training route name ``PRECISION[-cl][-compile][-tN]`` (e.g. ``bf16-cl-t2``) as its parts.

    ``threads`` is ``None`` when the name has no ``-tN``. Raises ``ValueError`` with the grammar otherwise.
    """
    match = _ROUTE_RE.fullmatch(str(name))
    if match is None:
        raise ValueError(f"unknown training route {name!r}; use 'auto' (timing probe, the default) or a "
                         f"name PRECISION[-cl][-compile][-tN]: precision fp32 or bf16, -cl channels-last, "
                         f"-compile torch.compile, -tN N torch threads, e.g. 'bf16-cl-t2' or 'fp32'")
    return {"precision": match[1], "channels_last": bool(match[2]), "compile": bool(match[3]),
            "threads": int(match[5]) if match[5] else None}


class VolumeSource(_Strict):
    """One labelled image: raw image, label image, optional z range."""

    image: str
    labels: str
    slices: str | None = None

    @field_validator("image", "labels")
    @classmethod
    def _exists(cls, value: str, info: ValidationInfo) -> str:
        path = resolve_config_path(value, info)
        found = resolve_location(path)
        file = found[1].file if found else Path(path)
        if not Path(file).exists():
            raise ValueError(f"file not found: {file}")
        return path

    @field_validator("slices", mode="before")
    @classmethod
    def _slices_text(cls, value: Any) -> Any:
        if isinstance(value, int):
            return str(value)
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        return value


class UnlabelledSource(_Strict):
    """One unlabelled image or volume (any format emseg reads) and an optional z range (issue 18)."""

    image: str
    slices: str | None = None

    _exists = field_validator("image")(VolumeSource._exists.__func__)
    _slices_text = field_validator("slices", mode="before")(VolumeSource._slices_text.__func__)


class DataConfig(_Strict):
    """Training and validation data and the class list."""

    train: list[VolumeSource] = Field(min_length=1)
    val: list[VolumeSource] | None = None
    val_fraction: float = Field(default=0.15, ge=0.0, lt=1.0)
    classes: list[str] = Field(min_length=2)
    ignore_label: int | None = Field(default=None, ge=0, le=65535)
    background: int | None = Field(default=0, ge=0)
    #: Unlabelled images for training.semi_supervised (issue 18); may overlap the labelled slices.
    unlabelled: list[UnlabelledSource] = []

    @field_validator("train", "val", "unlabelled", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names must be unique, got {self.classes}")
        if self.ignore_label is not None and self.ignore_label < len(self.classes):
            raise ValueError(
                f"ignore_label {self.ignore_label} is also the label of class "
                f"{self.classes[self.ignore_label]!r}; use a value >= {len(self.classes)} (e.g. 255)"
            )
        if self.background is not None and self.background >= len(self.classes):
            raise ValueError(f"background must be a class index < {len(self.classes)}, got {self.background}")
        return self


class ModelConfig(BaseModel):
    """``name`` from the model registry plus that model's options."""

    model_config = ConfigDict(extra="allow")
    name: str = "unet2d"
    context_slices: int = Field(default=1, ge=1)
    #: Start training from the matching weights of a model.pt, a run directory or an `emseg pretrain` output.
    init: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _resolve_weights(cls, data: Any, info: ValidationInfo) -> Any:
        # model.encoder_weights and model.init (files) resolve against the config's folder like the data paths
        for key in ("encoder_weights", "init"):
            if isinstance(data, dict) and isinstance(data.get(key), str):
                data = {**data, key: resolve_config_path(data[key], info)}
        return data

    @field_validator("init")
    @classmethod
    def _init_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).exists():
            raise ValueError(f"model.init: {value} not found; give a model.pt, a run directory of `emseg train` "
                             f"or an output folder of `emseg pretrain`")
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.name not in MODELS:
            raise ValueError(f"unknown model {self.name!r}.{suggest(self.name, MODELS.names())} Available: {', '.join(MODELS.names())}")
        if self.context_slices % 2 != 1:
            raise ValueError(f"context_slices must be odd (1, 3, 5, ...), got {self.context_slices}")
        validate_model_options(self.name, self.options)
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AugmentConfig(_Strict):
    """Random augmentation applied to training patches (labels follow the image)."""

    flips: bool = True
    rot90: bool = True
    transpose: bool = True
    brightness: float = Field(default=0.1, ge=0.0, description="max additive shift, in std units")
    contrast: float = Field(default=0.1, ge=0.0, lt=1.0, description="max relative contrast change")
    # Continuous transforms (data/_geometric.py): off by default; each is applied to a patch with
    # probability ``spatial_probability``; labels follow by nearest neighbour, weight maps linearly.
    rotation: float = Field(default=0.0, ge=0.0, le=180.0, description="free rotation: max angle in degrees (0 = off)")
    zoom: list[float] | None = Field(default=None, min_length=2, max_length=2, description="zoom factor range, e.g. [0.8, 1.25]")
    grid_distortion: float = Field(default=0.0, ge=0.0, lt=1.0, description="albumentations-style distort_limit (0 = off)")
    grid_steps: int = Field(default=5, ge=2, description="grid distortion: cells per axis")
    elastic: Literal["off", "simard", "guay"] = Field(
        default="off", description="elastic deformation: per-patch Simard field, or Guay's one coarse field per epoch")
    elastic_alpha: float = Field(default=30.0, ge=0.0, description="elastic displacement scale in pixels")
    elastic_sigma: float = Field(default=6.0, gt=0.0, description="simard: Gaussian smoothing (pixels); guay: grid spacing / 4")
    noise_std: float = Field(default=0.0, ge=0.0, description="additive Gaussian noise std (normalised units)")
    spatial_probability: float = Field(default=0.5, ge=0.0, le=1.0)

    @field_validator("zoom")
    @classmethod
    def _zoom(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not (0 < value[0] <= value[1]):
            raise ValueError(f"zoom must be [low, high] with 0 < low <= high, e.g. [0.8, 1.25]; got {value}")
        return value


class EdgeTermConfig(_Strict):
    """One Guay edge-preserving weight term (see :func:`emseg.data.guay_weight_map`)."""

    source: list[int] = Field(min_length=1)
    target: list[int] = Field(min_length=1)
    alpha: float = Field(default=1.0, ge=0.0)
    c: float = Field(default=0.1, ge=0.0, lt=1.0)
    sigma: float = Field(default=2.0, gt=0.0)

    @field_validator("source", "target", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value


class WeightMapConfig(_Strict):
    """Per-pixel loss weights fed to ``weighted_ce``: ``guay`` or ``unet_border`` (Ronneberger)."""

    kind: Literal["guay", "unet_border"]
    w0: float | None = Field(default=None, ge=0.0, description="guay: constant term (default 1); unet_border: border weight (default 10)")
    class_balance: bool = True
    edge_terms: list[EdgeTermConfig] = []
    sigma: float = Field(default=5.0, gt=0.0, description="unet_border: border width in pixels")
    foreground: list[int] = Field(default=[1], min_length=1, description="unet_border: classes forming instances")

    @field_validator("foreground", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @model_validator(mode="after")
    def _check(self) -> WeightMapConfig:
        if self.kind == "unet_border" and self.edge_terms:
            raise ValueError("edge_terms belong to kind 'guay'; kind 'unet_border' uses w0, sigma, foreground")
        return self


class PatchSamplingConfig(_Strict):
    """Where training windows are drawn.

    ``foreground`` (default): ``training.foreground_oversampling`` of the patches are centred on a
    foreground class; ``labelled`` (Meyer et al.): ``labelled_fraction`` of the windows must contain
    labelled foreground, the rest anywhere; ``grid`` (Guay et al.): windows on a regular grid with
    ``spacing`` ``[sy, sx]`` pixels, shuffled each epoch.
    """

    mode: Literal["foreground", "labelled", "grid"] = "foreground"
    labelled_fraction: float = Field(default=0.8, ge=0.0, le=1.0)
    spacing: list[int] | None = Field(default=None, min_length=2, max_length=2)

    @field_validator("spacing", mode="before")
    @classmethod
    def _square(cls, value: Any) -> Any:
        return [value, value] if isinstance(value, int) else value

    @model_validator(mode="after")
    def _check(self) -> PatchSamplingConfig:
        if self.spacing is not None and any(v < 1 for v in self.spacing):
            raise ValueError(f"spacing must be >= 1 pixel per axis, got {self.spacing}")
        return self


class AbandonConfig(_Strict):
    """Guay's rule: stop a run whose validation mean IoU is below ``score`` after ``epochs`` epochs."""

    epochs: int = Field(ge=1)
    score: float = Field(ge=0.0, le=1.0)


class SemiSupervisedConfig(_Strict):
    """Learning from ``data.unlabelled`` next to the labels (issue 18).

    ``mean_teacher``: consistency between the student's prediction of a strongly augmented unlabelled
    patch and an EMA teacher's prediction of the weakly augmented one.  ``pseudo_label``: the teacher's
    confident pixels (probability of its class >= that class's threshold) become cross-entropy targets of
    the student's strong view; the rest is ignored (``balance``: the kept pixels of each class stand in for
    all the pixels the teacher gives that class; ``loss: supervised``: they are learned with the supervised
    loss and its class weights instead of plain cross-entropy).  ``cutmix`` (either method): the student's
    views are mixed in pairs, a box of one patch pasted into another, and so are the teacher's predictions
    (French et al., "Semi-supervised semantic segmentation needs strong, varied perturbations", 2020).
    Pixels with real labels keep them, always.  The term is weighted by ``weight`` ramped up as
    ``exp(-5 (1 - t / ramp_up)^2)`` over the budget fraction ``t``.
    """

    method: Literal["mean_teacher", "pseudo_label"]
    weight: float = Field(default=1.0, ge=0.0)
    threshold: float | list[float] = Field(default=0.9, description="pseudo_label: one value or one per class")
    ramp_up: float = Field(default=0.25, ge=0.0, le=1.0, description="fraction of the budget to reach full weight")
    teacher_decay: float = Field(default=0.99, gt=0.0, lt=1.0, description="EMA decay of the teacher per step")
    batch_size: int | None = Field(default=None, ge=1, description="unlabelled patches per step (default batch_size)")
    balance: bool = Field(default=False, description=(
        "pseudo_label: weight each class's confident pixels by (pixels the teacher gives that class) / (those of "
        "them kept), so the threshold does not shift the class proportions towards the easy, large classes; "
        "with loss: ce only (loss: supervised weighs classes by training.class_weights instead)"))
    loss: Literal["ce", "supervised"] = Field(default="ce", description=(
        "pseudo_label: 'ce', plain cross-entropy on the confident pixels; 'supervised', the run's own supervised "
        "loss (training.loss with training.class_weights: class-weighted cross-entropy + Dice by default) on them, "
        "so a rare class's pseudo-labels weigh what its real labels do"))
    cutmix: bool = Field(default=False, description=(
        "the student sees pairs of unlabelled patches with a box of one pasted into the other (CutMix, half the "
        "area) and learns the teacher's predictions mixed the same way: a spatial perturbation on top of the "
        "photometric one; needs batch_size >= 2"))

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if not values or any(not 0.0 < v <= 1.0 for v in values):
            raise ValueError(f"threshold must be in (0, 1] (one value or one per class), got {value}")
        return value

    @model_validator(mode="after")
    def _pseudo_label_only(self) -> SemiSupervisedConfig:
        if self.method != "pseudo_label" and self.loss != "ce":
            raise ValueError(f"loss: {self.loss} is for method: pseudo_label (the mean teacher's term is a distance "
                             "between probabilities, not a loss on labels); remove it or use method: pseudo_label")
        return self


class TrainingConfig(_Strict):
    """Optimisation settings. Training stops at ``max_minutes`` or ``epochs``."""

    max_minutes: float = Field(default=20.0, gt=0)
    epochs: int = Field(default=10_000, ge=1)
    iterations_per_epoch: int = Field(default=50, ge=1)
    batch_size: int = Field(default=8, ge=1)
    patch_size: list[int] = Field(
        default=[256, 256], min_length=2, max_length=3,
        description="(y, x) for 2-D models; (z, y, x) for 3-D models (default: the model's window)",
    )
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    lr_schedule: Literal["cosine", "constant", "exponential", "plateau"] = "cosine"
    optimizer: Literal["adam", "radam", "sgd"] = "adam"
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="sgd only")
    nesterov: bool = Field(default=False, description="sgd only")
    warmup_fraction: float = Field(default=0.0, ge=0.0, lt=1.0, description="linear warm-up over this fraction of the budget")
    lr_decay_rate: float = Field(default=0.96, gt=0.0, le=1.0, description="exponential: lr * rate ** (step / lr_decay_steps)")
    lr_decay_steps: int = Field(default=1000, ge=1)
    plateau_factor: float = Field(default=0.25, gt=0.0, lt=1.0, description="plateau: multiply lr by this (0.25 = divide by 4)")
    plateau_patience: int = Field(default=10, ge=1, description="plateau: epochs without improvement before a cut")
    weight_decay_groups: dict[str, float] = Field(
        default={}, description="L2 per parameter group of models exposing param_groups(); others use weight_decay")
    loss: dict[str, Any] | None = Field(
        default=None, description="loss name -> weight or {weight, options}; default: ce (class_weights) + dice")
    aux_loss_weights: dict[str, float] | None = Field(
        default=None, description="weights of auxiliary heads of multi-head models (default aux2d: 0.33)")
    weight_map: WeightMapConfig | None = None
    checkpoint_metric: Literal["val_mean_iou", "val_loss", "val_mean_f1", "val_auc"] = "val_mean_iou"
    early_stopping_patience: int | None = Field(default=None, ge=1, description="epochs without improvement")
    abandon_below: AbandonConfig | None = None
    patch_sampling: PatchSamplingConfig = PatchSamplingConfig()
    seed: int = 0
    foreground_oversampling: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="fraction of patches centred on a labelled pixel of a randomly chosen foreground class",
    )
    class_weights: Literal["auto", "rare"] | list[float] | None = Field(
        default="auto",
        description="cross-entropy class weights: 'auto' (1/sqrt frequency, the default: on EPFL it beat "
        "no weights, docs/BENCHMARKS.md), 'rare' (sqrt(median frequency / frequency), at least 1: only "
        "classes rarer than the median class weighted up), null (none) or one value per class",
    )
    dice_weight: float = Field(default=1.0, ge=0)
    ce_weight: float = Field(default=1.0, ge=0)
    augment: AugmentConfig = AugmentConfig()
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    num_threads: int | None = Field(default=None, ge=1)
    route: str = Field(
        default="auto",
        description="training route: 'auto' (a few timed steps at the start pick precision, channels-last, "
                    "torch.compile and torch threads) or a name PRECISION[-cl][-compile][-tN], e.g. 'bf16-cl-t2'")
    adapt_to_budget: bool = Field(
        default=True,
        description="with max_minutes given, choose the batch_size / patch_size left unset from the measured step "
                    "time, the budget and the data (README: Budget-aware defaults); false keeps the defaults")
    prefetch: int = Field(
        default=2, ge=0, le=16,
        description="batches drawn and augmented ahead by a background thread (0: inline, in the training loop)")
    val_max_slices: int | None = Field(default=None, ge=1, description="cap on validation slices scored per epoch")
    ema_decay: float | None = Field(
        default=None, gt=0.0, lt=1.0,
        description="keep an exponential moving average of the weights (decay per step, e.g. 0.99; warmed up as "
                    "min(decay, (1 + n) / (10 + n))); validation and the saved model use the average. Off by default")
    semi_supervised: SemiSupervisedConfig | None = Field(
        default=None, description="learn from data.unlabelled too: {method: mean_teacher | pseudo_label, ...}")
    calibrate: bool = Field(
        default=False,
        description="after training, fit per-class logit offsets on the validation slices (coordinate ascent on "
                    "validation mean IoU; stored in the checkpoint, applied by `emseg predict`; neural networks "
                    "only). Off by default: on EPFL it raised validation but lowered test IoU (docs/BENCHMARKS.md)")

    @field_validator("route")
    @classmethod
    def _route(cls, value: str) -> str:
        if value != "auto":
            parse_route(value)
        return value

    @field_validator("patch_size", mode="before")
    @classmethod
    def _square(cls, value: Any) -> Any:
        return [value, value] if isinstance(value, int) else value

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_shorthand(cls, value: Any) -> Any:
        # `loss: focal` or `loss: [focal, dice]` mean weight 1 each
        if isinstance(value, str):
            return {value: 1.0}
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return {v: 1.0 for v in value}
        return value

    @field_validator("patch_size")
    @classmethod
    def _multiple(cls, value: list[int]) -> list[int]:
        if any(v < 16 for v in value[-2:]):
            raise ValueError(f"patch_size must be at least 16 pixels per axis in y and x, got {value}")
        if len(value) == 3 and value[0] < 1:
            raise ValueError(f"patch_size z (first of 3 values) must be at least 1, got {value}")
        return value


class PreprocessConfig(_Strict):
    """Input preprocessing stored with the model and applied identically at prediction time.

    ``grain_filter: [650, 3200]`` adds one self-dual area-filtered copy of the
    (centre) slice per area threshold, in pixels, as extra input channels after
    the ``model.context_slices`` channels (Meyer et al.).
    """

    grain_filter: list[int] = Field(default=[], description="area thresholds in pixels (one extra channel each)")

    @field_validator("grain_filter", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @field_validator("grain_filter")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError(f"grain_filter areas must be >= 1 pixel, got {value}")
        return value


class RootConfig(_Strict):
    """A whole YAML document (training, pretraining): unknown keys refused, the file it was read from kept."""

    #: The YAML file it was read from (set by its loader), for messages.
    _source: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str | None:
        """The YAML file this configuration was read from, or ``None``."""
        return self._source


class Config(RootConfig):
    """A whole training configuration."""

    data: DataConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    preprocess: PreprocessConfig = PreprocessConfig()

    @model_validator(mode="after")
    def _check(self) -> Config:
        weights = self.training.class_weights
        if isinstance(weights, list) and len(weights) != len(self.data.classes):
            raise ValueError(
                f"training.class_weights has {len(weights)} values but data.classes has "
                f"{len(self.data.classes)} classes"
            )
        spatial_dims = MODELS.get(self.model.name).spatial_dims
        if len(self.training.patch_size) == 3 and spatial_dims != 3:
            raise ValueError(
                f"training.patch_size {self.training.patch_size} has 3 values (z, y, x) but model "
                f"{self.model.name!r} is 2-D: give 2 values (y, x)"
            )
        if spatial_dims == 3 and self.model.context_slices != 1:
            raise ValueError(f"model.context_slices must be 1 for the 3-D model {self.model.name!r} "
                             f"(it sees neighbouring sections through its window), got {self.model.context_slices}")
        semi = self.training.semi_supervised
        if semi is not None and not self.data.unlabelled:
            raise ValueError("training.semi_supervised needs unlabelled images: add data.unlabelled: "
                             "[{image: PATH, slices: ...}]")
        if semi is not None and self.preprocess.grain_filter:
            raise ValueError("training.semi_supervised does not work with preprocess.grain_filter yet; remove one of them")
        if semi is not None and isinstance(semi.threshold, list) and len(semi.threshold) != len(self.data.classes):
            raise ValueError(f"training.semi_supervised.threshold has {len(semi.threshold)} values but data.classes "
                             f"has {len(self.data.classes)} classes: give one value, or one per class")
        if semi is not None and semi.cutmix and (semi.batch_size or self.training.batch_size) < 2:
            raise ValueError("training.semi_supervised.cutmix mixes unlabelled patches in pairs: set "
                             "training.semi_supervised.batch_size to 2 or more (or cutmix: false)")
        from emseg.config._checks import check_training_config  # lazy: it builds the loss (torch)

        check_training_config(self)
        return self

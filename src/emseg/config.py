"""Typed configuration: a YAML file validated once, at the edge, by pydantic.

Example (``train.yaml``)::

    data:
      train: {image: raw.tif, labels: labels.tif, slices: "0:24"}
      val: {image: raw.tif, labels: labels.tif, slices: "24:30"}
      classes: [background, membrane, mitochondrion]
      ignore_label: 255
    model: {name: unet2d, dropout: 0.5}
    training: {max_minutes: 20, seed: 0}

Relative paths resolve against the folder holding the config file.  Unknown
keys, wrong types and missing files raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from emseg._registry import suggest

__all__ = [
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "PreprocessConfig",
    "TrainingConfig",
    "VolumeSource",
    "load_config",
    "read_yaml",
]


class ConfigError(ValueError):
    """A configuration problem; the message names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _resolve(value: str, info: ValidationInfo) -> str:
    base = (info.context or {}).get("base_dir")
    text = os.path.expanduser(str(value))
    if base is not None and not os.path.isabs(text):
        text = os.path.join(base, text)
    return text


class VolumeSource(_Strict):
    """One labelled image: raw image, label image, optional z range."""

    image: str
    labels: str
    slices: str | None = None

    @field_validator("image", "labels")
    @classmethod
    def _exists(cls, value: str, info: ValidationInfo) -> str:
        from emseg.io._registry import resolve

        path = _resolve(value, info)
        found = resolve(path)
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


class DataConfig(_Strict):
    """Training and validation data and the class list."""

    train: list[VolumeSource] = Field(min_length=1)
    val: list[VolumeSource] | None = None
    val_fraction: float = Field(default=0.15, ge=0.0, lt=1.0)
    classes: list[str] = Field(min_length=2)
    ignore_label: int | None = Field(default=None, ge=0, le=65535)
    background: int | None = Field(default=0, ge=0)

    @field_validator("train", "val", mode="before")
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
                data = {**data, key: _resolve(data[key], info)}
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
        from emseg.models import MODELS, validate_model_options

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
    val_max_slices: int | None = Field(default=None, ge=1, description="cap on validation slices scored per epoch")
    ema_decay: float | None = Field(
        default=None, gt=0.0, lt=1.0,
        description="keep an exponential moving average of the weights (decay per step, e.g. 0.99; warmed up as "
                    "min(decay, (1 + n) / (10 + n))); validation and the saved model use the average. Off by default")
    calibrate: bool = Field(
        default=False,
        description="after training, fit per-class logit offsets on the validation slices (coordinate ascent on "
                    "validation mean IoU; stored in the checkpoint, applied by `emseg predict`; neural networks "
                    "only). Off by default: on EPFL it raised validation but lowered test IoU (docs/BENCHMARKS.md)")

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


class Config(_Strict):
    """A whole training configuration."""

    data: DataConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    #: The YAML file it was read from (set by :func:`load_config`), for messages.
    _source: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str | None:
        """The YAML file this configuration was read from, or ``None``."""
        return self._source

    @model_validator(mode="after")
    def _check(self) -> Config:
        weights = self.training.class_weights
        if isinstance(weights, list) and len(weights) != len(self.data.classes):
            raise ValueError(
                f"training.class_weights has {len(weights)} values but data.classes has "
                f"{len(self.data.classes)} classes"
            )
        from emseg.models import MODELS

        spatial_dims = MODELS.get(self.model.name).spatial_dims
        if len(self.training.patch_size) == 3 and spatial_dims != 3:
            raise ValueError(
                f"training.patch_size {self.training.patch_size} has 3 values (z, y, x) but model "
                f"{self.model.name!r} is 2-D: give 2 values (y, x)"
            )
        if spatial_dims == 3 and self.model.context_slices != 1:
            raise ValueError(f"model.context_slices must be 1 for the 3-D model {self.model.name!r} "
                             f"(it sees neighbouring sections through its window), got {self.model.context_slices}")
        from emseg._config_checks import check_training_config  # lazy: it builds the loss (torch)

        check_training_config(self)
        return self


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not isinstance(p, int) or True)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            key = str(e["loc"][-1])
            parent = _model_at(e["loc"][:-1])
            allowed = list(parent.model_fields) if parent else []
            msg = f"unknown key.{suggest(key, allowed)} Allowed here: {', '.join(allowed)}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {loc or '(top level)'}: {msg}")
    return f"invalid configuration {source}:\n" + "\n".join(lines)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        ann = field.annotation
        for candidate in getattr(ann, "__args__", (ann,)):
            inner = getattr(candidate, "__args__", (candidate,))
            found = [c for c in (candidate, *inner) if isinstance(c, type) and issubclass(c, BaseModel)]
            if found:
                model = found[0]
                break
        else:
            return None
    return model


def config_from_dict(data: dict[str, Any], *, base_dir: str | os.PathLike | None = None, source: str = "") -> Config:
    """Validate a configuration dictionary; relative paths resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration {source}: expected a mapping with keys data, model, training")
    try:
        return Config.model_validate(data, context={"base_dir": None if base_dir is None else str(base_dir)})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def read_yaml(path: str | os.PathLike, *, what: str) -> Any:
    """The content of a YAML file (``{}`` when empty).

    Raises:
        ConfigError: the file is missing (``"<what> not found: PATH"``) or not valid YAML.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None


def load_config(path: str | os.PathLike, *, overrides: dict[str, Any] | None = None,
                recipe: str | None = None) -> Config:
    """Load and validate a YAML configuration file.

    Args:
        path: the YAML file.
        overrides: nested mapping merged over the file's content (e.g. from CLI flags).
        recipe: name of a training preset (``emseg recipes``) merged *under* the
            file: the file's keys win.

    Raises:
        ConfigError: unreadable YAML, unknown keys, wrong types, missing files.
    """
    path = Path(path)
    data = read_yaml(path, what="configuration file")
    if overrides:
        data = deep_merge(data, overrides)
    if recipe is not None:
        from emseg.training._recipes import apply_recipe

        data = apply_recipe(recipe, data)
    config = config_from_dict(data, base_dir=path.resolve().parent, source=f"in {path}")
    config._source = str(path)
    return config


def deep_merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, recursively for nested mappings (neither is modified)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out

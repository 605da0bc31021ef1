"""The YAML file of `emseg pretrain`: unlabelled data, the same ``model:`` block as training, the pretext task.

Example (``pretrain.yaml``)::

    data:
      unlabelled:
        - {image: train_raw.tif}
        - {image: big.zarr/raw, slices: "0:200"}
    model: {name: unet2d, features: [16, 32, 64, 128]}
    pretraining: {method: mim, max_minutes: 30, patch_size: 128}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emseg.config import (
    ConfigError,
    ModelConfig,
    RootConfig,
    UnlabelledSource,
    deep_merge,
    format_errors,
    read_yaml,
)
from emseg.models import MODELS

__all__ = ["PretrainConfig", "PretrainingOptions", "load_pretrain_config"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class PretrainData(_Strict):
    """The unlabelled images (any format emseg reads), each with an optional z range."""

    unlabelled: list[UnlabelledSource] = Field(min_length=1)

    @field_validator("unlabelled", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value


class PretrainingOptions(_Strict):
    """The pretext task and its optimisation. Pretraining stops at ``max_minutes`` or ``epochs``."""

    method: Literal["mim", "moco"] = Field(
        default="mim", description="mim: masked image modelling of the whole network; moco: MoCo v2 of the encoder")
    max_minutes: float = Field(default=20.0, gt=0)
    epochs: int = Field(default=10_000, ge=1)
    iterations_per_epoch: int = Field(default=50, ge=1)
    batch_size: int = Field(default=8, ge=2)
    patch_size: list[int] | None = Field(default=None, min_length=2, max_length=3,
                                         description="(y, x), or (z, y, x) for 3-D models; default 128 / the model's window")
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    num_threads: int | None = Field(default=None, ge=1)
    # masked image modelling
    mask_ratio: float = Field(default=0.5, gt=0.0, lt=1.0, description="mim: fraction of blocks masked")
    mask_block: int = Field(default=8, ge=1, description="mim: block side in pixels (y, x)")
    mask_block_z: int = Field(default=1, ge=1, description="mim, 3-D models: block depth in slices")
    # MoCo v2
    moco_dim: int = Field(default=128, ge=8, description="moco: projection dimension")
    moco_queue: int = Field(default=1024, ge=8, description="moco: negatives kept in the queue")
    moco_momentum: float = Field(default=0.99, gt=0.0, lt=1.0, description="moco: momentum encoder decay per step")
    temperature: float = Field(default=0.2, gt=0.0, description="moco: InfoNCE temperature")
    crop_scale: list[float] = Field(default=[0.35, 1.0], min_length=2, max_length=2,
                                    description="moco: area fraction range of the random crops")

    @field_validator("patch_size", mode="before")
    @classmethod
    def _square(cls, value: Any) -> Any:
        return [value, value] if isinstance(value, int) else value

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, value: list[float]) -> list[float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got {value}")
        return value


class PretrainConfig(RootConfig):
    """A whole pretraining configuration."""

    data: PretrainData
    model: ModelConfig = ModelConfig()
    pretraining: PretrainingOptions = PretrainingOptions()

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        spec = MODELS.get(self.model.name)
        if spec.backend != "torch":
            raise ValueError(f"model {self.model.name!r} is not a neural network: nothing to pretrain")
        patch = self.pretraining.patch_size
        if patch is not None:
            if (len(patch) == 3) != (spec.spatial_dims == 3):
                raise ValueError(f"pretraining.patch_size {patch}: give {spec.spatial_dims} values "
                                 f"({'z, y, x' if spec.spatial_dims == 3 else 'y, x'}) for model {self.model.name!r}")
            if any(v < 16 for v in patch[-2:]):
                raise ValueError(f"pretraining.patch_size must be at least 16 pixels in y and x, got {patch}")
        if spec.spatial_dims == 3 and self.model.context_slices != 1:
            raise ValueError(f"model.context_slices must be 1 for the 3-D model {self.model.name!r}")
        return self


def load_pretrain_config(path: str | os.PathLike, *, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """Load and validate a pretraining YAML file; relative paths resolve against its folder.

    Raises:
        ConfigError: unreadable YAML, unknown keys, wrong types, missing files (naming the key).
    """
    path = Path(path)
    data = read_yaml(path, what="pretraining configuration")
    if not isinstance(data, dict):
        raise ConfigError(f"invalid pretraining configuration in {path}: expected a mapping with keys data, model, "
                          f"pretraining")
    if overrides:
        data = deep_merge(data, overrides)
    try:
        config = PretrainConfig.model_validate(data, context={"base_dir": str(path.resolve().parent)})
    except ValidationError as err:
        raise ConfigError(format_errors(err, f"in {path}", root=PretrainConfig, what="pretraining configuration")) from None
    config._source = str(path)
    return config

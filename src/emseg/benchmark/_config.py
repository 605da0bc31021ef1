"""The benchmark description (BENCH.yaml): its schema, validation and the plan of runs.

A benchmark is described by a YAML file (see :class:`BenchConfig` and the
README section "Benchmark many models")::

    dataset:
      train: {image: train_raw.tif, labels: train_labels.tif, slices: "0:20"}
      val: {image: train_raw.tif, labels: train_labels.tif, slices: "20:27"}
      test: {image: test_raw.tif, labels: test_labels.tif}
    classes: [background, membrane, mitochondrion]
    models:
      - {name: unet2d, label: unet-small, features: [8, 16, 32]}
      - {name: random-forest, n_estimators: 50}
    losses:
      - {name: dice-ce, training: {dice_weight: 1, ce_weight: 1}}
    seeds: [0]
    budget: {minutes: 10, device: cpu}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from emseg.config import (
    ConfigError,
    VolumeSource,
    config_from_dict,
    deep_merge,
    format_errors,
    read_yaml,
    resolve_config_path,
)
from emseg.data import parse_slices
from emseg.evaluation import parse_metrics, parse_subsets
from emseg.io import open_image, resolve_location
from emseg.models import MODELS

__all__ = ["BenchConfig", "load_bench_config"]

RESULT_FILENAME = "result.json"
_NONE_LOSS = "none"  # loss label of models that have no loss (the random forest)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class BenchDataset(_Strict):
    """Training / validation data (as the training config's ``data``) plus the test volume."""

    train: list[VolumeSource] = Field(min_length=1)
    val: list[VolumeSource] | None = None
    val_fraction: float = Field(default=0.15, ge=0.0, lt=1.0)
    test: VolumeSource
    second_annotation: str | None = Field(
        default=None, description="a second annotator's labels of the test image (same shape): reported as a row "
        "'second annotator' to show inter-annotator variability next to the models")

    @field_validator("train", "val", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("second_annotation")
    @classmethod
    def _exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None

        path = resolve_config_path(value, info)
        found = resolve_location(path)
        if not Path(found[1].file if found else path).exists():
            raise ValueError(f"file not found: {path}")
        return path


class Budget(_Strict):
    """Training time per run; ``device`` is checked, not chosen (hide GPUs with CUDA_VISIBLE_DEVICES= for cpu)."""

    minutes: float = Field(default=10.0, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class BenchModel(BaseModel):
    """A registry model with options; ``label`` names it in tables (default: ``name``)."""

    model_config = ConfigDict(extra="allow")
    name: str
    label: str | None = None
    context_slices: int = Field(default=1, ge=1)
    budget: Budget | None = None
    training: dict[str, Any] = Field(default_factory=dict, description="training overrides for this model only")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def display(self) -> str:
        return self.label or self.name


class BenchLoss(_Strict):
    """A loss variant: a name and the ``training:`` overrides that select it."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    training: dict[str, Any] = Field(default_factory=dict)


class EvaluationOptions(_Strict):
    metrics: list[str] | str = "all"
    subsets: dict[str, list[str]] = Field(default_factory=dict, description="e.g. {org: [mitochondrion, vesicle]}")
    per_slice: bool = Field(default=True, description="objects per z slice (right for 2-D data sets)")
    membrane_class: str | None = None
    spacing: float | list[float] | None = None


class Overlays(_Strict):
    slices: list[int] = Field(default_factory=lambda: [0], description="indices into the selected test slices")
    classes: list[str] | None = Field(default=None, description="classes to colour; default: every foreground class")
    width: int = Field(default=240, ge=32, le=1024, description="panel width in pixels")


class EnsembleSpec(_Strict):
    method: Literal["mean", "weighted", "vote"]
    members: str | list[str] = Field(default="all", description="'all', 'topN' (best N by validation mean IoU) or run names")
    name: str | None = None

    @field_validator("members")
    @classmethod
    def _members(cls, value: Any) -> Any:
        if isinstance(value, str) and not (value == "all" or (value.startswith("top") and value[3:].isdigit() and int(value[3:]) >= 1)):
            raise ValueError(f"members must be 'all', 'topN' (e.g. top3) or a list of run names; got {value!r}")
        return value


class BenchConfig(_Strict):
    """A whole benchmark description (BENCH.yaml)."""

    dataset: BenchDataset
    classes: list[str] = Field(min_length=2)
    ignore_label: int | None = Field(default=None, ge=0, le=65535)
    background: int | None = Field(default=0, ge=0)
    models: list[BenchModel] = Field(min_length=1)
    losses: list[BenchLoss] = Field(default_factory=lambda: [BenchLoss(name="default")], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    folds: int | None = Field(default=None, ge=2, description="K-fold cross-validation over the training slices instead of dataset.val")
    budget: Budget = Budget()
    training: dict[str, Any] = Field(default_factory=dict, description="base training options for every run")
    evaluation: EvaluationOptions = EvaluationOptions()
    overlays: Overlays = Overlays()
    ensembles: list[EnsembleSpec] = Field(default_factory=list)
    title: str = "emseg benchmark"

    @model_validator(mode="after")
    def _check(self) -> BenchConfig:
        labels = [m.display for m in self.models]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise ValueError(f"models: {repeated} appear more than once; give each a distinct 'label'")
        if any("__" in x or "/" in x for x in labels):
            raise ValueError(f"model labels may not contain '__' or '/': {labels}")
        names = [loss.name for loss in self.losses]
        if len(set(names)) != len(names):
            raise ValueError(f"losses: names must be unique; got {names}")
        parse_metrics(self.evaluation.metrics)
        parse_subsets(self.evaluation.subsets, self.classes)
        if self.overlays.classes is not None:
            unknown = [c for c in self.overlays.classes if c not in self.classes]
            if unknown:
                raise ValueError(f"overlays.classes: unknown classes {unknown}; classes are {self.classes}")
        if self.folds is not None and self.dataset.val is not None:
            raise ValueError("give either dataset.val or folds, not both (folds split the training slices)")
        return self


def load_bench_config(path: str | os.PathLike) -> BenchConfig:
    """Read and validate BENCH.yaml; relative paths resolve against its folder.

    Raises:
        ConfigError: unreadable YAML, unknown keys, wrong types, missing files
            or model options the registry rejects (message names the key).
    """
    path = Path(path)
    data = read_yaml(path, what="benchmark file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys dataset, classes, models, ...")
    try:
        bench = BenchConfig.model_validate(data, context={"base_dir": str(path.resolve().parent)})
    except ValidationError as err:
        raise ConfigError(format_errors(err, f"in {path}").replace("invalid configuration", "invalid benchmark")) from None
    # validate every run's training configuration now, before hours of training start
    for run in _plan(bench):
        _training_config(bench, run, source=f"in {path} (run {run['name']})")
    return bench


# ----------------------------------------------------------------------------- planning


def _plan(bench: BenchConfig) -> list[dict[str, Any]]:
    """Every run of the matrix, in order: model-major, then loss, then seed/fold."""
    runs = []
    replicas = [("fold", k) for k in range(bench.folds)] if bench.folds else [("seed", s) for s in bench.seeds]
    for model in bench.models:
        has_loss = model.name in MODELS and MODELS.get(model.name).backend == "torch"
        for loss in bench.losses if has_loss else [BenchLoss(name=_NONE_LOSS)]:
            for kind, value in replicas:
                runs.append({"name": f"{model.display}__{loss.name}__{kind}{value}", "model": model, "loss": loss,
                             "seed": value if kind == "seed" else bench.seeds[0], "fold": value if kind == "fold" else None})
    return runs


def _volume_depth(source: VolumeSource) -> int:
    with open_image(source.image) as image:
        return int(image.array.shape[0])


def _fold_sources(bench: BenchConfig, fold: int) -> tuple[list[dict], list[dict]]:
    """Split the training slices into K folds (every K-th slice of the pooled list goes to one fold)."""
    pooled = []
    for i, source in enumerate(bench.dataset.train):
        for z in parse_slices(source.slices, _volume_depth(source)):
            pooled.append((i, z))
    if len(pooled) < bench.folds:
        raise ConfigError(f"folds: {bench.folds} folds need at least {bench.folds} training slices; got {len(pooled)}")

    def sources(pairs):
        out = []
        for i, source in enumerate(bench.dataset.train):
            zs = [z for j, z in pairs if j == i]
            if zs:
                out.append({"image": source.image, "labels": source.labels, "slices": ",".join(map(str, zs))})
        return out

    val = [p for n, p in enumerate(pooled) if n % bench.folds == fold]
    train = [p for n, p in enumerate(pooled) if n % bench.folds != fold]
    return sources(train), sources(val)


def _training_config(bench: BenchConfig, run: dict[str, Any], *, source: str = ""):
    model: BenchModel = run["model"]
    budget = model.budget or bench.budget
    dump = lambda s: s.model_dump(mode="json")  # noqa: E731
    if run["fold"] is not None:
        train, val = _fold_sources(bench, run["fold"])
    else:
        train = [dump(s) for s in bench.dataset.train]
        val = None if bench.dataset.val is None else [dump(s) for s in bench.dataset.val]
    data = {"train": train, "classes": list(bench.classes), "ignore_label": bench.ignore_label,
            "background": bench.background, "val_fraction": bench.dataset.val_fraction}
    if val is not None:
        data["val"] = val
    training = deep_merge(deep_merge(deep_merge(dict(bench.training), run["loss"].training), model.training),
                          {"seed": run["seed"], "max_minutes": budget.minutes})
    raw = {"data": data, "model": {"name": model.name, "context_slices": model.context_slices, **model.options},
           "training": training}
    return config_from_dict(raw, base_dir=None, source=source), raw, budget


def _hash(raw: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_volume(source: VolumeSource) -> tuple[np.ndarray, np.ndarray, list[int]]:
    with open_image(source.image) as image, open_image(source.labels) as labels:
        if tuple(image.array.shape) != tuple(labels.array.shape):
            raise ValueError(f"dataset.test: {source.image} has shape {tuple(image.array.shape)} but "
                             f"{source.labels} has {tuple(labels.array.shape)}")
        zs = parse_slices(source.slices, image.array.shape[0])
        raw = np.stack([np.asarray(image.array[z]) for z in zs])
        truth = np.stack([np.asarray(labels.array[z]) for z in zs])
    return raw, truth, zs

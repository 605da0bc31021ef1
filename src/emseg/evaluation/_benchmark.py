"""``emseg benchmark``: train a matrix of models x losses x seeds (or folds), score each run, report.

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

Every run trains with :func:`emseg.training.train` into
``OUT/runs/<model>__<loss>__seed<s>/`` (``fold<k>`` with ``folds: K``),
predicts the test slices, and is scored with every metric group of
:func:`emseg.evaluation.score_segmentation`. ``OUT/runs/<run>/result.json``
(written atomically, last) marks a finished run: a second invocation skips
it. A run interrupted during training resumes from its ``last.pt`` (its time
budget counts the time already spent); one interrupted before its first
checkpoint, or whose options changed since, starts again. Results go to
``OUT/results.json``, ``OUT/results.csv`` and the HTML report ``OUT/report.html``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from emseg.config import ConfigError, VolumeSource, _format_errors, _resolve, config_from_dict, deep_merge, parse_slices

logger = logging.getLogger(__name__)

__all__ = ["BenchConfig", "load_bench_config", "run_benchmark"]

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
        from emseg.io._registry import resolve

        path = _resolve(value, info)
        found = resolve(path)
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
        from emseg.evaluation._suite import parse_metrics, parse_subsets

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
    if not path.is_file():
        raise ConfigError(f"benchmark file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys dataset, classes, models, ...")
    try:
        bench = BenchConfig.model_validate(data, context={"base_dir": str(path.resolve().parent)})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, f"in {path}").replace("invalid configuration", "invalid benchmark")) from None
    # validate every run's training configuration now, before hours of training start
    for run in _plan(bench):
        _training_config(bench, run, source=f"in {path} (run {run['name']})")
    return bench


# ----------------------------------------------------------------------------- planning


def _plan(bench: BenchConfig) -> list[dict[str, Any]]:
    """Every run of the matrix, in order: model-major, then loss, then seed/fold."""
    from emseg.models import MODELS

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
    from emseg.io import open_image

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


# ----------------------------------------------------------------------------- running one run


def _read_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl``, one per epoch.

    A run killed after an epoch's line was appended but before its ``last.pt``
    was saved repeats that epoch when it resumes: the later line (the epoch the
    model comes from) wins. A line cut short by the kill is skipped.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    by_epoch: dict[Any, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s: skipping a line cut short (an interrupted run?): %.60s", path, line)
            continue
        by_epoch.pop(record.get("epoch"), None)
        by_epoch[record.get("epoch")] = {k: record.get(k) for k in ("epoch", "elapsed_s", "val_mean_iou", "train_loss")}
    return list(by_epoch.values())


def _read_json(path: Path) -> Any:
    """The JSON content of ``path``, or ``None`` when it is missing or cut short (a killed writer)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _load_volume(source: VolumeSource) -> tuple[np.ndarray, np.ndarray, list[int]]:
    from emseg.io import open_image

    with open_image(source.image) as image, open_image(source.labels) as labels:
        if tuple(image.array.shape) != tuple(labels.array.shape):
            raise ValueError(f"dataset.test: {source.image} has shape {tuple(image.array.shape)} but "
                             f"{source.labels} has {tuple(labels.array.shape)}")
        zs = parse_slices(source.slices, image.array.shape[0])
        raw = np.stack([np.asarray(image.array[z]) for z in zs])
        truth = np.stack([np.asarray(labels.array[z]) for z in zs])
    return raw, truth, zs


def _quantise(probs: np.ndarray) -> np.ndarray:
    """Probabilities to uint8 (1/255 steps) for the on-disk copy ``test_probabilities.npy``."""
    return np.round(np.clip(probs, 0, 1) * 255).astype(np.uint8)


def _save_npy(path: Path, array: np.ndarray) -> None:
    from emseg.io import atomic_output

    with atomic_output(path, overwrite=True) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def _write_json(path: Path, data: Any) -> None:
    from emseg.evaluation._metrics import _json_safe
    from emseg.io import atomic_output

    with atomic_output(path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")


def _check_device(budget: Any) -> str:
    import torch

    has_cuda = torch.cuda.is_available()
    if budget.device == "cuda" and not has_cuda:
        raise ValueError("budget.device is 'cuda' but no CUDA GPU is available; use device: cpu or auto")
    if budget.device == "cpu" and has_cuda:
        raise ValueError("budget.device is 'cpu' but a CUDA GPU is visible and training would use it; "
                         "run with CUDA_VISIBLE_DEVICES= (empty) to benchmark on the CPU, or set device: auto")
    return "cuda" if has_cuda else "cpu"


def _score(bench: BenchConfig, labels: np.ndarray, truth: np.ndarray, probs: np.ndarray | None) -> dict[str, Any]:
    from emseg.evaluation._suite import score_segmentation

    ev = bench.evaluation
    return score_segmentation(labels, truth, classes=bench.classes, metrics=ev.metrics, probabilities=probs,
                              subsets=ev.subsets, ignore_label=bench.ignore_label, background=bench.background,
                              per_slice=ev.per_slice, spacing=ev.spacing, membrane_class=ev.membrane_class)


def _fractions(bench: BenchConfig, labels: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float]]:
    """Volume fraction of each class in the prediction and the truth (counted pixels), and their difference.

    Whole test volume, no cell mask: :func:`emseg.analysis.volume_fractions`
    does per-cell fractions; here one number per class is what a table needs.
    """
    keep = np.ones(truth.shape, bool) if bench.ignore_label is None else truth != bench.ignore_label
    k = len(bench.classes)
    n = max(int(keep.sum()), 1)
    pred_counts = np.bincount(labels[keep].ravel().astype(np.int64), minlength=k)[:k] / n
    true_counts = np.bincount(truth[keep].ravel().astype(np.int64), minlength=k)[:k] / n
    return {c: {"truth": float(true_counts[i]), "predicted": float(pred_counts[i]),
                "difference": float(pred_counts[i] - true_counts[i])} for i, c in enumerate(bench.classes)}


def _annotator_row(bench: BenchConfig, out: Path, test: tuple) -> dict[str, Any]:
    """The second annotation scored against the truth like a model (no probabilities, no training)."""
    from emseg.evaluation._agreement import annotation_agreement
    from emseg.evaluation._suite import flatten_scores

    source = bench.dataset.test.model_copy(update={"labels": bench.dataset.second_annotation})
    _, raw_second, _ = _load_volume(source)
    agreement = annotation_agreement(test[1], raw_second, classes=bench.classes, ignore_label=bench.ignore_label,
                                     background=bench.background)
    # pixels the second annotator left unlabelled count as background when it is scored like a model
    second = raw_second if bench.ignore_label is None else np.where(raw_second == bench.ignore_label, 0, raw_second)
    scores = _score(bench, second.astype(np.uint8), test[1], None)
    _save_npy(out / "annotator" / "test_labels.npy", second.astype(np.uint8))
    metrics = flatten_scores(scores)
    for name, value in _fractions(bench, second, test[1]).items():
        metrics[f"fraction_difference/{name}"] = value["difference"]
    return {
        "run": "second annotator", "kind": "annotator", "model": "second annotator", "model_name": "annotation",
        "model_options": {}, "loss": "-", "loss_training": {}, "seed": None, "fold": None, "budget_minutes": None,
        "device": None, "parameters": None, "parameters_kind": None, "flops_per_slice": None, "flops_shape": None,
        "train_seconds": None, "over_budget": False, "time_to_best_s": None, "best_epoch": None, "epochs": None,
        "stop_reason": None, "best_val_mean_iou": None, "predict_seconds": None, "test_voxels": int(second.size),
        "mvox_per_s": None, "curve": [], "metrics": metrics, "scores": scores, "config_hash": None,
        "agreement": agreement.to_dict(), "fractions": _fractions(bench, second, test[1]),
        "labels_path": "annotator/test_labels.npy",
    }


def _run_one(bench: BenchConfig, run: dict[str, Any], out: Path, test: tuple, *, progress: bool) -> dict[str, Any]:
    from emseg.ensemble._runs import remove_stale_temporaries
    from emseg.evaluation._complexity import model_complexity
    from emseg.evaluation._suite import flatten_scores
    from emseg.inference import Predictor
    from emseg.training import train

    config, raw, budget = _training_config(bench, run)
    run_dir = out / "runs" / run["name"]
    marker = run_dir / RESULT_FILENAME
    digest = _hash(raw)
    remove_stale_temporaries(run_dir)
    if marker.is_file():
        previous = _read_json(marker) or {}  # written atomically; unreadable only if damaged by hand
        if previous.get("config_hash") == digest:
            logger.info("%s: finished earlier, not retrained", run["name"])
            return previous
        logger.warning("%s: its options changed since it ran; training it again", run["name"])
        marker.unlink()
        _clear_run(run_dir)
    device = _check_device(budget)
    stamp = run_dir / "bench_run.json"
    if stamp.is_file() and (_read_json(stamp) or {}).get("config_hash") != digest:
        _clear_run(run_dir)  # other options, or a stamp cut short: nothing here can be trusted
    summary = _read_json(run_dir / "summary.json")
    if summary is not None and (run_dir / "model.pt").is_file():
        logger.info("%s: training had finished; predicting and scoring", run["name"])
    else:
        resume = (run_dir / "last.pt").is_file()
        if not resume:
            _clear_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(stamp, {"config_hash": digest})
        logger.info("%s: %s (budget %.2f min)", run["name"], "resuming training" if resume else "training", budget.minutes)
        train(config, run_dir, resume=resume, overwrite=not resume, progress=progress)
        summary = json.loads((run_dir / "summary.json").read_text())
    over_budget = summary["elapsed_s"] > 1.1 * budget.minutes * 60 + 5
    if over_budget:  # e.g. a random forest: it is fitted in one go, the budget cannot stop it
        logger.warning("%s: training took %.0f s, over its budget of %.1f min", run["name"], summary["elapsed_s"],
                       budget.minutes)
    curve = _read_curve(run_dir)
    best = next((c for c in curve if c["epoch"] == summary["best_epoch"]), None)

    # predicted at the precision it was trained and validated with (training.precision, default auto)
    predictor = Predictor.from_checkpoint(run_dir, precision=config.training.precision)
    raw_test, truth, _ = test
    start = time.perf_counter()
    labels, probs = predictor.predict_volume(raw_test, probabilities=True)
    predict_seconds = time.perf_counter() - start
    complexity = model_complexity(predictor.model, in_channels=predictor.context_slices, shape=raw_test.shape[1:])
    scores = _score(bench, labels, truth, probs)
    _save_npy(run_dir / "test_probabilities.npy", _quantise(probs))
    _save_npy(run_dir / "test_labels.npy", labels)
    model: BenchModel = run["model"]
    fractions = _fractions(bench, labels, truth)
    metrics = flatten_scores(scores)
    for name, value in fractions.items():
        metrics[f"fraction_difference/{name}"] = value["difference"]
    record = {
        "run": run["name"], "kind": "run", "model": model.display, "model_name": model.name,
        "model_options": model.options, "loss": run["loss"].name, "loss_training": run["loss"].training,
        "seed": run["seed"], "fold": run["fold"], "budget_minutes": budget.minutes, "device": device,
        "parameters": complexity["parameters"], "parameters_kind": complexity["parameters_kind"],
        "flops_per_slice": complexity["flops"], "flops_shape": complexity["flops_shape"],
        "train_seconds": summary["elapsed_s"], "over_budget": over_budget,
        "time_to_best_s": None if best is None else best["elapsed_s"],
        "best_epoch": summary["best_epoch"], "epochs": summary["epochs"], "stop_reason": summary["stop_reason"],
        "best_val_mean_iou": summary["best_val_mean_iou"],
        "predict_seconds": round(predict_seconds, 3), "test_voxels": int(labels.size),
        "mvox_per_s": labels.size / 1e6 / predict_seconds if predict_seconds > 0 else None,
        "curve": curve, "metrics": metrics, "scores": scores, "fractions": fractions, "config_hash": digest,
        "labels_path": f"runs/{run['name']}/test_labels.npy",
    }
    _write_json(marker, record)  # last: its presence means the run is finished
    return json.loads(marker.read_text())


def _clear_run(run_dir: Path) -> None:
    from emseg.io._atomic import remove_path

    if run_dir.exists():
        for child in run_dir.iterdir():
            remove_path(child)


# ----------------------------------------------------------------------------- ensembles


def _ensemble_members(spec: EnsembleSpec, runs: list[dict]) -> tuple[list[dict], int | None]:
    """The candidate member runs and ``top`` (for ``topN``), as ``emseg ensemble RUNS --top N`` takes them."""
    if spec.members == "all":
        return runs, None
    if isinstance(spec.members, str):
        return runs, int(spec.members[3:])
    by_name = {r["run"]: r for r in runs}
    missing = [m for m in spec.members if m not in by_name]
    if missing:
        raise ValueError(f"ensembles: members {missing} are not runs of this benchmark; runs: {sorted(by_name)}")
    return [by_name[m] for m in spec.members], None


def _run_ensemble(bench: BenchConfig, spec: EnsembleSpec, records: list[dict], out: Path, test: tuple,
                  plan: list[dict[str, Any]], *, progress: bool) -> dict[str, Any] | None:
    """Build the ensemble with :func:`emseg.ensemble.build_ensemble` (as ``emseg ensemble`` would from the same
    runs: same member selection, weight grid search and combination) into ``OUT/ensembles/<name>/``, then
    predict the test volume with it like any model."""
    from emseg.ensemble import ValidationSource, build_ensemble
    from emseg.evaluation._suite import flatten_scores
    from emseg.inference import Predictor

    candidates, top = _ensemble_members(spec, [r for r in records if r["kind"] == "run"])
    if min(len(candidates), top or len(candidates)) < 2:
        logger.warning("ensemble %s skipped: needs at least two members", spec.method)
        return None
    name = spec.name or f"ensemble-{spec.method}-{spec.members if isinstance(spec.members, str) else len(candidates)}"
    # validation data: the benchmark's dataset.val, else each member's own (as `emseg ensemble` without --val)
    val = None if bench.dataset.val is None else [ValidationSource(s.image, s.labels, s.slices)
                                                   for s in bench.dataset.val]
    try:
        result = build_ensemble([out / "runs" / r["run"] for r in candidates], out / "ensembles" / name,
                                method=spec.method, top=top, val=val, overwrite=True, progress=progress)
    except ValueError as err:
        raise ValueError(f"ensembles: {name}: {err}") from None
    kept = [row for row in result.report["members"] if row.get("kept", True)]
    by_name = {r["run"]: r for r in candidates}
    members = [by_name[row["name"]] for row in kept]
    # predicted at the precision its members were trained and validated with (as each run is)
    first = next(run for run in plan if run["name"] == members[0]["run"])
    predictor = Predictor.from_checkpoint(result.model_path,
                                          precision=_training_config(bench, first)[0].training.precision)
    start = time.perf_counter()
    labels, probs = predictor.predict_volume(test[0], probabilities=True)
    predict_seconds = time.perf_counter() - start
    scores = _score(bench, labels, test[1], probs)
    _save_npy(out / "ensembles" / name / "test_labels.npy", labels)
    fractions = _fractions(bench, labels, test[1])
    metrics = flatten_scores(scores)
    for cls_name, value in fractions.items():
        metrics[f"fraction_difference/{cls_name}"] = value["difference"]
    sum_or_none = lambda key: None if any(r[key] is None for r in members) else sum(r[key] for r in members)  # noqa: E731
    return {
        "run": name, "kind": "ensemble", "model": name, "model_name": "ensemble", "model_options": {},
        "loss": spec.method, "loss_training": {}, "seed": None, "fold": None, "budget_minutes": sum(r["budget_minutes"] for r in members),
        "device": members[0]["device"], "members": [r["run"] for r in members],
        "weights": None if spec.method != "weighted" else [float(row["weight"]) for row in kept],
        "parameters": sum_or_none("parameters"), "parameters_kind": "sum of members",
        "flops_per_slice": sum_or_none("flops_per_slice"), "flops_shape": members[0]["flops_shape"],
        "train_seconds": sum(r["train_seconds"] for r in members), "time_to_best_s": None, "best_epoch": None,
        "epochs": None, "stop_reason": None, "best_val_mean_iou": None,
        "predict_seconds": round(predict_seconds, 3), "test_voxels": int(labels.size),
        "mvox_per_s": labels.size / 1e6 / predict_seconds if predict_seconds > 0 else None,
        "curve": [], "metrics": metrics, "scores": scores, "fractions": fractions, "config_hash": None,
        "labels_path": f"ensembles/{name}/test_labels.npy", "model_path": f"ensembles/{name}/model.pt",
    }


# ----------------------------------------------------------------------------- the whole benchmark

#: Scalar columns of results.csv before the metric columns.
CSV_FIELDS = ("run", "kind", "model", "model_name", "loss", "seed", "fold", "budget_minutes", "device", "parameters",
              "parameters_kind", "flops_per_slice", "train_seconds", "over_budget", "time_to_best_s", "best_epoch", "epochs",
              "stop_reason", "best_val_mean_iou", "predict_seconds", "mvox_per_s")


def _write_results(out: Path, bench: BenchConfig, records: list[dict], source: str, *, report: bool = False,
                   test: tuple | None = None) -> None:
    """``results.csv``, ``report.html`` (with ``report``), then ``results.json``: the last file written, each
    atomically, so a ``results.json`` is only ever there once everything of the benchmark is."""
    from emseg.io import atomic_output

    payload = {"title": bench.title, "benchmark": source, "classes": bench.classes,
               "background": bench.background, "ignore_label": bench.ignore_label,
               "test": bench.dataset.test.model_dump(mode="json"), "overlays": bench.overlays.model_dump(mode="json"),
               "runs": records}
    _write_csv(out, records)
    with atomic_output(out / "results.json", overwrite=True) as tmp:
        _write_json(tmp, payload)  # the report reads it from its temporary name, next to the runs
        if report:
            from emseg.evaluation._report import write_report

            write_report(tmp, out / "report.html", test_image=None if test is None else test[0],
                         test_truth=None if test is None else test[1])


def _write_csv(out: Path, records: list[dict]) -> None:
    from emseg.io import atomic_output

    metric_keys: list[str] = []
    for r in records:
        metric_keys += [k for k in r["metrics"] if k not in metric_keys]
    with atomic_output(out / "results.csv", overwrite=True) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*CSV_FIELDS, *metric_keys])
            for r in records:
                row = [r.get(k) for k in CSV_FIELDS] + [r["metrics"].get(k) for k in metric_keys]
                writer.writerow(["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row])


def run_benchmark(
    bench_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    only: list[str] | None = None,
    report: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) every run of a benchmark, then write the results and the report.

    Args:
        bench_file: the BENCH.yaml file (see :class:`BenchConfig`).
        out_dir: output folder: ``runs/<run>/``, ``results.json``,
            ``results.csv``, ``report.html``.
        only: run names (or substrings of them) to run; others are skipped
            (their finished results are still reported).
        report: also write ``report.html`` (needs the ``report`` extra: matplotlib).
        progress: progress bars on a terminal.

    Returns:
        The ``results.json`` content: ``{"title", "classes", "runs": [record, ...], ...}``.
    """
    bench = load_bench_config(bench_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from emseg.ensemble._runs import remove_stale_temporaries

    for folder in (out, out / "annotator", *(p for p in (out / "ensembles").glob("*") if p.is_dir())):
        remove_stale_temporaries(folder)
    plan = _plan(bench)
    test = _load_volume(bench.dataset.test)
    records = []
    for run in plan:
        if only and not any(o == run["name"] or o in run["name"] for o in only):
            marker = out / "runs" / run["name"] / RESULT_FILENAME
            if marker.is_file():
                records.append(json.loads(marker.read_text()))
            continue
        records.append(_run_one(bench, run, out, test, progress=progress))
    for spec in bench.ensembles:
        record = _run_ensemble(bench, spec, records, out, test, plan, progress=progress)
        if record is not None:
            records.append(record)
    if bench.dataset.second_annotation is not None:
        records.append(_annotator_row(bench, out, test))
    _write_results(out, bench, records, str(bench_file), report=report, test=test)
    return json.loads((out / "results.json").read_text())

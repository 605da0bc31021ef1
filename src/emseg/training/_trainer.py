"""The training loop: patches in, best checkpoint out, one metrics.jsonl line per epoch."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from emseg._device import autocast, default_device, resolve_precision
from emseg._progress import progress_bar
from emseg._version import __version__
from emseg.config import Config, load_config
from emseg.data import (
    IGNORE_INDEX,
    BatchStream,
    LabelledSlices,
    LabelledVolumes,
    Normalizer,
    PatchSampler,
    augment_batch,
    augment_volume_batch,
    class_frequencies,
)
from emseg.evaluation import EvaluationResult, confusion_matrix
from emseg.inference import Predictor
from emseg.models import MODELS, build_model, count_parameters, model_divisor
from emseg.models import MODEL_FILENAME, CheckpointError, inference_defaults, load_checkpoint, save_checkpoint
from emseg.models import check_initialisation, initialise_network
from emseg.training._run_dir import (
    CONFIG_FILENAME,
    LAST_FILENAME,
    METRICS_FILENAME,
    SUMMARY_FILENAME,
    append_metrics,
    describe_differences,
    network_differences,
    never_finished,
    remove_stale_temporaries,
    replace_text,
    restore_best,
    truncate_metrics,
    writing,
)
from emseg.training._spatial import (
    evaluate_volumes,
    fit_patch_to_data,
    inference_metadata,
    load_data,
    match_target,
    resolve_patch_size,
    volume_sampler,
    warn_absent_classes,
)
from emseg.losses import build_criterion, multi_head
from emseg.training._budget import adapt_to_budget
from emseg.training._ema import WeightAverage
from emseg.training._inputs import weight_maps, with_grain_channels
from emseg.training._optim import build_optimizer
from emseg.training._semi import SemiSupervised
from emseg.training._route import choose_route
from emseg.training._schedules import learning_rate, plateau_scale
from emseg.training._validation import METRIC_MODES, validate

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "TrainingInterrupted", "train", "class_weights_from_frequencies"]


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    model_path: Path
    best_epoch: int
    best_val_mean_iou: float
    epochs: int
    elapsed_s: float
    stop_reason: str
    checkpoint_metric: str = "val_mean_iou"
    best_metric: float = float("nan")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: ``model.pt`` (best so far) and ``last.pt`` are kept and resumable.

    ``run_dir``, ``model_path`` and ``last_path`` say where; ``epochs`` is the
    number of finished epochs, ``best_epoch`` the one in ``model.pt``.
    """

    def __init__(self, run_dir: Path, *, epochs: int, best_epoch: int) -> None:
        self.run_dir, self.epochs, self.best_epoch = Path(run_dir), epochs, best_epoch
        self.model_path, self.last_path = self.run_dir / MODEL_FILENAME, self.run_dir / LAST_FILENAME
        super().__init__(f"training interrupted after epoch {epochs}: best checkpoint {self.model_path} "
                         f"(epoch {best_epoch}), resumable state {self.last_path}")


def _restack(maps: list[np.ndarray], volumes: list[np.ndarray]) -> list[np.ndarray]:
    """Per-slice ``(Y, X)`` maps, in order, back into one ``(Z, Y, X)`` array per label sub-stack."""
    out, k = [], 0
    for vol in volumes:
        out.append(np.stack(maps[k:k + vol.shape[0]]).astype(np.float32))
        k += vol.shape[0]
    return out


def class_weights_from_frequencies(freqs: np.ndarray, mode: str = "auto") -> np.ndarray:
    """Cross-entropy class weights from class frequencies; 0 for classes absent from the training labels.

    ``auto``: ``1 / sqrt(frequency)``, scaled to mean 1 over the classes present.
    ``rare``: ``max(1, sqrt(median / frequency))`` with the median frequency of the
    classes present, so only classes rarer than the median class are weighted up
    (by the square root of median frequency balancing, Eigen & Fergus 2015) and
    the common ones keep weight 1.
    """
    freqs = np.asarray(freqs, dtype=np.float64)
    weights = np.zeros_like(freqs)
    present = freqs > 0
    if mode == "auto":
        weights[present] = 1.0 / np.sqrt(freqs[present])
        weights[present] /= weights[present].mean()
    elif mode == "rare":
        weights[present] = np.maximum(1.0, np.sqrt(np.median(freqs[present]) / freqs[present]))
    else:
        raise ValueError(f"class weight mode must be 'auto' or 'rare', got {mode!r}")
    return weights.astype(np.float32)


def _prepare_run_dir(out_dir: Path, *, overwrite: bool, resume: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not (overwrite or resume):
        if not never_finished(out_dir):
            raise FileExistsError(
                f"run directory {out_dir} is not empty; choose another --out, pass --overwrite to start again "
                f"or --resume to continue"
            )
        logger.warning("%s holds only the start of a run that never finished an epoch (no %s): starting it again",
                       out_dir, LAST_FILENAME)
        overwrite = True
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    if overwrite and not resume:
        for name in (MODEL_FILENAME, LAST_FILENAME, METRICS_FILENAME, SUMMARY_FILENAME):
            (out_dir / name).unlink(missing_ok=True)


def _resume_state(config: Config, out_dir: Path) -> dict[str, Any] | None:
    """``last.pt`` of ``out_dir`` checked against ``config`` before anything in the run is touched.

    Returns ``None`` (with a warning) when no epoch finished: the run starts
    from scratch.  Raises ``ValueError`` naming both configurations and the
    differing keys when ``config`` describes another network than the run's,
    or when ``last.pt`` cannot be read.
    """
    last = out_dir / LAST_FILENAME
    if not last.is_file():
        logger.warning("--resume: %s has no %s (no epoch finished, or the run was stopped while writing its first "
                       "checkpoint): starting the run from scratch", out_dir, LAST_FILENAME)
        return None
    try:
        state = load_checkpoint(last)
    except CheckpointError as err:
        raise ValueError(f"cannot resume: {err}. Pass --overwrite instead of --resume to start the run again "
                         f"(this deletes its checkpoints), or choose another --out") from None
    run_config = out_dir / CONFIG_FILENAME
    recorded = state.get("training", {}).get("config")
    if not isinstance(recorded, dict) and run_config.is_file():
        recorded = yaml.safe_load(run_config.read_text())
    diffs = network_differences(recorded or {}, config.model_dump(mode="json"))
    if diffs:
        new = config.source or "the new configuration"
        raise ValueError(
            f"cannot resume {out_dir} with {new}: it describes another network than the run's {run_config} "
            f"({describe_differences(diffs)}). Nothing was changed. Resume with the run's configuration "
            f"(emseg train {run_config} --out {out_dir} --resume), or train the new network into a new --out"
        )
    if (config.training.ema_decay is None) != ("ema" not in state):
        raise ValueError(f"cannot resume {last}: it was trained {'with' if 'ema' in state else 'without'} "
                         f"training.ema_decay; resume with the same setting or start a new run")
    return state


def _random_states(batches: BatchStream, device: torch.device) -> dict[str, Any]:
    """Every random state the next epoch draws from, for ``last.pt`` (numbers as JSON text: safe to load).

    The generator and sampler states are those right after the last batch used (the batch worker may
    have drawn further ahead)."""
    numpy_state, sampler_state = batches.random_state()
    states: dict[str, Any] = {
        "numpy": json.dumps(numpy_state),
        "python": json.dumps(random.getstate()),
        "torch": torch.get_rng_state(),
        "sampler": json.dumps(sampler_state),
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _restore_random_states(states: dict[str, Any], rng: np.random.Generator, sampler: Any, device: torch.device) -> None:
    rng.bit_generator.state = json.loads(states["numpy"])
    version, internal, gauss = json.loads(states["python"])
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(states["torch"])
    sampler.load_state_dict(json.loads(states["sampler"]))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _evaluate_slices(predictor: Predictor, val: LabelledSlices, num_classes: int, background: int | None) -> EvaluationResult:
    if isinstance(val, LabelledVolumes):  # 3-D model: sliding-window prediction of the sub-stacks
        return evaluate_volumes(predictor, val, num_classes, background)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for image, labels in zip(val.images, val.labels):
        pred = predictor.predict_proba_slice(image).argmax(0)
        confusion += confusion_matrix(pred, labels, num_classes=num_classes, ignore_label=IGNORE_INDEX)
    return EvaluationResult.from_confusion(confusion, classes=predictor.classes, background=background)


def _checkpoint(config: Config, *, backend: str, state: dict, normalizer: Normalizer, in_channels: int,
                training: dict[str, Any], divisor: int = 16) -> dict[str, Any]:
    return {
        "emseg_version": __version__,
        "backend": backend,
        "model": {
            "name": config.model.name,
            "options": config.model.options,
            "in_channels": in_channels,
            "context_slices": config.model.context_slices,
            "spatial_dims": MODELS.get(config.model.name).spatial_dims,
        },
        "classes": list(config.data.classes),
        "ignore_label": config.data.ignore_label,
        "background": config.data.background,
        "normalization": normalizer.to_dict(),
        "inference": {**inference_defaults(divisor=divisor), **inference_metadata(config)},
        "preprocess": config.preprocess.model_dump(mode="json"),
        "state": state,
        "training": training,
    }


def _metrics_line(path: Path, record: dict[str, Any]) -> None:
    with writing(path, resumable=path.with_name(LAST_FILENAME)):
        append_metrics(path, record)


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def train(
    config: Config | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the model a configuration describes and keep the best checkpoint.

    Args:
        config: a :class:`~emseg.config.Config` or the path of a YAML file.
        out_dir: run directory; receives ``model.pt`` (best by
            ``training.checkpoint_metric``, default validation mean IoU),
            ``last.pt`` (for ``resume``), ``metrics.jsonl`` (one line per
            epoch), ``config.yaml``, ``summary.json`` and, with
            ``training.weight_map``, the cached ``weight_maps.npz``.
        overwrite: start again in a non-empty run directory.
        resume: continue from ``last.pt`` in ``out_dir``.
        progress: show a progress bar (only on a terminal).

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingInterrupted: ``Ctrl-C`` after the first epoch: ``model.pt`` (the
            best epoch so far) and ``last.pt`` are kept; ``resume=True`` continues.
        RunWriteError: a file of the run could not be written (full disk); the
            message names it.
    """
    if not isinstance(config, Config):
        config = load_config(config)
    out_dir = Path(out_dir)
    # every check before anything is written: data (3-D: sub-stacks), patch size, the run to resume
    train_data, val_data = load_data(config)
    spec = MODELS.get(config.model.name)
    user_set = set(config.training.model_fields_set)  # before the patch is fitted to the data
    if spec.backend != "random-forest":
        config = fit_patch_to_data(config, train_data)
    warn_absent_classes(config, train_data, val_data)
    resume_state = None
    if resume and spec.backend != "random-forest":
        resume_state = _resume_state(config, out_dir)
    if resume and resume_state is None:  # nothing to resume (or a forest, fitted in one go): start again
        resume, overwrite = False, True
    if config.model.init and resume_state is None:  # model.init of another architecture: refused before any write
        check_initialisation(config.model.init, name=config.model.name, options=config.model.options,
                             in_channels=config.model.context_slices + len(config.preprocess.grain_filter),
                             num_classes=len(config.data.classes))
    budget = None
    if spec.backend != "random-forest":  # batch / patch size for max_minutes on this machine (resume: as recorded)
        config, budget = adapt_to_budget(config, train_data, user_set=user_set,
                                         resumed=None if resume_state is None else resume_state.get("training", {}))
    _prepare_run_dir(out_dir, overwrite=overwrite, resume=resume)
    replace_text(out_dir / CONFIG_FILENAME, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    if spec.backend == "random-forest":
        return _train_forest(config, out_dir, train_data, val_data)
    return _train_torch(config, out_dir, train_data, val_data, resume_state=resume_state, progress=progress,
                        budget_choice=budget)


def _train_forest(config: Config, out_dir: Path, train_data: LabelledSlices, val_data: LabelledSlices) -> TrainResult:
    start = time.perf_counter()
    normalizer = Normalizer.fit(train_data.images)
    forest = build_model(config.model.name, in_channels=1, num_classes=len(config.data.classes), options=config.model.options)
    if config.model.context_slices != 1:
        raise ValueError("model 'random-forest' works on single slices: set model.context_slices to 1")
    forest.fit([normalizer(im) for im in train_data.images], [lab for lab in train_data.labels],
               num_classes=len(config.data.classes), ignore_label=IGNORE_INDEX)
    predictor = Predictor(forest, classes=config.data.classes, normalizer=normalizer)
    score = float("nan")
    record: dict[str, Any] = {"epoch": 1, "elapsed_s": round(time.perf_counter() - start, 2)}
    if len(val_data):
        result = _evaluate_slices(predictor, val_data, len(config.data.classes), config.data.background)
        score = result.mean_iou
        record.update(val_mean_iou=_nan_to_none(result.mean_iou), val_mean_iou_foreground=_nan_to_none(result.mean_iou_foreground),
                      val_iou={c: _nan_to_none(v["iou"]) for c, v in result.per_class.items()})
    _metrics_line(out_dir / "metrics.jsonl", record)
    training = {"epoch": 1, "val_mean_iou": _nan_to_none(score), "config": config.model_dump(mode="json")}
    with writing(out_dir / MODEL_FILENAME):
        save_checkpoint(out_dir / MODEL_FILENAME, _checkpoint(config, backend="random-forest", state=forest.state_dict(),
                                                            normalizer=normalizer, in_channels=1, training=training))
    elapsed = time.perf_counter() - start
    return _finish(out_dir, best_epoch=1, best=score, epochs=1, elapsed=elapsed, reason="fitted")


def _validation_subset(val_data: Any, max_slices: int | None) -> Any:
    """The validation data scored per epoch: the first ``training.val_max_slices`` images, or all."""
    return val_data if max_slices is None else val_data.take(list(range(min(len(val_data), max_slices))))


def calibrate(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Fit (again) the logit offsets of a trained network on its run's validation data.

    For runs trained with ``training.calibrate: false`` or before emseg had
    calibration: reads ``config.yaml`` and ``model.pt`` of ``run_dir``, predicts
    the validation slices with the uncalibrated network, fits the offsets
    (:func:`~emseg.training._calibration.fit_logit_offsets`) and rewrites
    ``model.pt`` (atomically) and ``summary.json`` with them.

    Returns:
        ``{"logit_offsets", "val_mean_iou_before", "val_mean_iou_after", "pixels", "seconds"}``.
    """
    run_dir = Path(run_dir)
    config_path, model_path = run_dir / "config.yaml", run_dir / MODEL_FILENAME
    for path in (config_path, model_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: calibrate needs a run directory written by `emseg train`")
    config = load_config(config_path)
    ckpt = load_checkpoint(model_path)
    if ckpt.get("backend") != "torch":
        raise ValueError(f"{model_path}: only neural networks have logits to calibrate (backend {ckpt.get('backend')!r})")
    _, val_data = load_data(config)
    tc = config.training
    val = _validation_subset(val_data, tc.val_max_slices)
    if not len(val):
        raise ValueError(f"{config_path}: no validation data to calibrate on (set data.val or data.val_fraction)")
    predictor = Predictor.from_checkpoint_dict(ckpt, calibrated=False, precision=tc.precision)
    info = _calibrate(run_dir, val, None, predictor=predictor, num_classes=len(config.data.classes),
                      background=config.data.background)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary["calibration"] = info
    summary_path.write_text(json.dumps(summary, indent=2))
    return info


def _calibrate(out_dir: Path, val: Any, scores: list[np.ndarray] | None, *, predictor: Predictor, num_classes: int,
               background: int | None) -> dict[str, Any]:
    """Fit the logit offsets on the validation data with the best checkpoint and store them in it."""
    from emseg.training._calibration import fit_logit_offsets

    path = out_dir / MODEL_FILENAME
    ckpt = load_checkpoint(path)
    if scores is None:  # `emseg calibrate`, or a resume past the best epoch: predict the validation again
        predictor.model.load_state_dict(ckpt["state"])
        predictor.model.eval()
        scores = []
        validate(predictor, val, num_classes=num_classes, background=background, keep=scores)
    t0 = time.perf_counter()
    result = fit_logit_offsets(scores, list(val.labels), ignore_label=IGNORE_INDEX)
    info = {**result.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
    ckpt["inference"]["logit_offsets"] = info["logit_offsets"]
    ckpt["training"]["calibration"] = info
    with writing(path):
        save_checkpoint(path, ckpt)
    logger.info("calibrated %s: validation mean IoU %.4f -> %.4f with logit offsets %s", path, result.before,
                result.after, info["logit_offsets"])
    return info


def _finish(out_dir: Path, *, best_epoch: int, best: float, epochs: int, elapsed: float, reason: str,
            metric: str = "val_mean_iou", best_metric: float | None = None,
            calibration: dict[str, Any] | None = None, run_info: dict[str, Any] | None = None) -> TrainResult:
    best_metric = best if best_metric is None else best_metric
    result = TrainResult(out_dir, out_dir / MODEL_FILENAME, best_epoch, best, epochs, elapsed, reason, metric, best_metric)
    summary = {"model": str(result.model_path), "best_epoch": best_epoch, "best_val_mean_iou": _nan_to_none(best),
               "checkpoint_metric": metric, "best_metric": _nan_to_none(best_metric),
               "epochs": epochs, "elapsed_s": round(elapsed, 1), "stop_reason": reason}
    if calibration is not None:
        summary["calibration"] = calibration
    summary.update(run_info or {})  # how the run trained: route, budget-aware choices
    replace_text(out_dir / SUMMARY_FILENAME, json.dumps(summary, indent=2))
    logger.info("training stopped (%s) after %d epochs, %.0f s; best epoch %d, val mean IoU %s -> %s",
                reason, epochs, elapsed, best_epoch, f"{best:.3f}" if not math.isnan(best) else "n/a", result.model_path)
    return result


def _train_torch(config: Config, out_dir: Path, train_data: LabelledSlices, val_data: LabelledSlices, *,
                 resume_state: dict[str, Any] | None, progress: bool,
                 budget_choice: dict[str, Any] | None = None) -> TrainResult:
    tc = config.training
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    device = default_device()
    dtype = resolve_precision(tc.precision, device)
    num_classes = len(config.data.classes)
    grain = list(config.preprocess.grain_filter)
    in_channels = config.model.context_slices + len(grain)

    normalizer = Normalizer.fit(train_data.images)
    volumes = isinstance(train_data, LabelledVolumes)  # 3-D model: (z, y, x) patches of sub-stacks
    wmaps = val_wmaps = None
    patch_size = resolve_patch_size(config)
    if volumes:
        if grain:
            raise ValueError(f"preprocess.grain_filter: not available for the 3-D model {config.model.name!r} yet; "
                             f"remove the key or use a 2-D model")
        if tc.weight_map is not None:  # per 2-D section, as Guay et al.; restacked into (Z, Y, X) maps
            spec = tc.weight_map.model_dump(mode="json")
            train_slices = [s for vol in train_data.labels for s in vol]
            wmaps = _restack(weight_maps(spec, train_slices, num_classes=num_classes, cache_dir=out_dir),
                             train_data.labels)
            if len(val_data):
                val_wmaps = _restack(weight_maps(spec, [s for vol in val_data.labels for s in vol],
                                                 num_classes=num_classes, balance_from=train_slices), val_data.labels)
        sampler = volume_sampler(config, train_data, normalizer, rng, weights=wmaps)
    else:
        norm_images = [normalizer(im) for im in with_grain_channels(train_data.images, grain, progress=progress)]
        if tc.weight_map is not None:
            spec = tc.weight_map.model_dump(mode="json")
            wmaps = weight_maps(spec, train_data.labels, num_classes=num_classes, cache_dir=out_dir)
            val_wmaps = weight_maps(spec, val_data.labels, num_classes=num_classes, balance_from=train_data.labels) if len(val_data) else None
        ps = tc.patch_sampling
        sampler = PatchSampler(norm_images, train_data.labels, patch_size=patch_size, num_classes=num_classes,
                               background=config.data.background, foreground_oversampling=tc.foreground_oversampling, rng=rng,
                               weights=wmaps, mode=ps.mode, labelled_fraction=ps.labelled_fraction,
                               spacing=None if ps.spacing is None else tuple(ps.spacing))
    freqs = class_frequencies(train_data.labels, num_classes)
    if isinstance(tc.class_weights, str):  # auto | rare
        weights = torch.from_numpy(class_weights_from_frequencies(freqs, tc.class_weights))
    elif tc.class_weights is None:
        weights = None
    else:
        weights = torch.tensor(tc.class_weights, dtype=torch.float32)
    base_criterion = build_criterion(tc, num_classes=num_classes, class_weights=weights,
                                     auto_weights=class_weights_from_frequencies(freqs).tolist()).to(device)
    criterion = None  # wrapped for multi-head models once the first output is seen
    model = build_model(config.model.name, in_channels=in_channels, num_classes=num_classes,
                        options=config.model.options).to(device)
    if config.model.init and resume_state is None:  # model.init: matching weights of a checkpoint (last.pt wins on resume)
        logger.info(initialise_network(model, config.model.init, name=config.model.name, options=config.model.options,
                                       in_channels=in_channels, num_classes=num_classes).describe())
    # the fastest way to run a step here (precision, memory format, compile, threads): before the optimiser
    # is built, on the model in place; a resumed run keeps the route it recorded
    route_choice = choose_route(model, input_shape=(tc.batch_size, in_channels, *patch_size), device=device,
                                configured=tc.route, precision=tc.precision, num_threads=tc.num_threads,
                                budget_s=tc.max_minutes * 60.0,
                                recorded=(resume_state or {}).get("training", {}).get("route"))
    route, dtype = route_choice.route, route_choice.route.dtype(device)
    logger.info("%s", route_choice.describe())
    optimizer = build_optimizer(model, name=tc.optimizer, learning_rate=tc.learning_rate, weight_decay=tc.weight_decay,
                                weight_decay_groups=tc.weight_decay_groups, momentum=tc.momentum, nesterov=tc.nesterov)
    ema = WeightAverage(model, tc.ema_decay) if tc.ema_decay is not None else None
    semi = (SemiSupervised(config, model, normalizer=normalizer, patch_size=tuple(patch_size), device=device,
                           dtype=dtype) if tc.semi_supervised is not None else None)  # data.unlabelled (issue 18)
    scored = model if ema is None else ema.model  # the weights validated and saved
    predictor = Predictor(scored, classes=config.data.classes, normalizer=normalizer,
                          context_slices=config.model.context_slices, grain_filter=grain,
                          grain_cache=len(val_data) + 1, device=device, precision=tc.precision,
                          divisor=model_divisor(model), window_3d=inference_metadata(config).get("window_3d"))
    # auxiliary-head loss weights: the model's own (hybrid2d3d: c2d), overridden by training.aux_loss_weights
    aux_weights = {**(getattr(model, "aux_loss_weights", None) or {}), **(tc.aux_loss_weights or {})}
    metric, mode = tc.checkpoint_metric, METRIC_MODES[tc.checkpoint_metric]
    history: list[float | None] = []  # checkpoint metric per epoch (plateau schedule)
    val = _validation_subset(val_data, tc.val_max_slices)
    unit = "sub-stacks" if volumes else "slices"
    logger.info("model %s: %.2f M parameters; %d training %s, %d validation %s; precision %s; "
                "class weights %s", config.model.name, count_parameters(model) / 1e6, len(train_data), unit, len(val), unit,
                "fp32" if dtype is None else str(dtype).removeprefix("torch."),
                None if weights is None else [round(float(w), 2) for w in weights])

    budget = tc.max_minutes * 60.0
    total_iters = tc.epochs * tc.iterations_per_epoch
    epoch, iteration, elapsed_before = 0, 0, 0.0
    best, best_epoch, best_iou = -math.inf, 0, float("nan")
    if resume_state is not None:
        state = resume_state  # checked by _resume_state before the run directory was touched
        try:
            model.load_state_dict(state["train_state"] if ema is not None else state["state"])
        except RuntimeError as err:  # a config.yaml edited by hand: torch lists every tensor; say it shortly
            raise ValueError(f"cannot resume {out_dir / LAST_FILENAME}: its weights do not fit the configured "
                             f"network ({str(err).splitlines()[0]} ...); resume with the run's configuration "
                             f"{out_dir / CONFIG_FILENAME} or train into a new --out") from None
        if ema is not None:
            ema.load(state["state"], state["ema"])
        if semi is not None and "semi" in state:  # else the teacher starts again from the resumed weights
            semi.load_state_dict(state["semi"])
        optimizer.load_state_dict(state["optimizer"])
        info = state["training"]
        epoch, iteration, elapsed_before = info["epoch"], info["iteration"], info["elapsed_s"]
        best = info.get("best_score", info["best_val_mean_iou"])
        best = -math.inf if best is None else best
        best_iou = float("nan") if info["best_val_mean_iou"] is None else info["best_val_mean_iou"]
        best_epoch = info["best_epoch"]
        history = list(info.get("history", []))
        if "rng" in state:  # the random states at the end of that epoch: the run goes on as if never stopped
            _restore_random_states(state["rng"], rng, sampler, device)
        else:  # last.pt of emseg < 0.x without them: a fresh stream per epoch
            rng = np.random.default_rng([tc.seed, epoch])
            sampler.rng = rng
        truncate_metrics(out_dir / METRICS_FILENAME, epoch)
        restore_best(out_dir, state)
        logger.info("resuming %s at epoch %d", out_dir, epoch)

    # patches drawn and augmented by a background thread (training.prefetch), same batches as inline
    batches = BatchStream(sampler, augment=augment_volume_batch if volumes else augment_batch, config=tc.augment,
                          rng=rng, batch_size=tc.batch_size, iterations_per_epoch=tc.iterations_per_epoch,
                          patch_shape=tuple(patch_size), weights=bool(wmaps), prefetch=tc.prefetch)
    start = time.perf_counter() - elapsed_before
    val_seconds = 0.0
    best_scores: list[np.ndarray] | None = None  # validation log-probabilities of the best epoch (calibration)
    stop_reason = "epochs"

    def fraction_done() -> float:
        # the first step starts the schedule at 0, not at the milliseconds of set-up on the clock, so that
        # a run bounded by epochs (not by time) takes the same steps every time, resumed or not
        if iteration == 0:
            return 0.0
        return min(1.0, max((time.perf_counter() - start) / budget, iteration / total_iters))

    try:
        with progress_bar("Training", total=100, unit="%", enabled=progress) as advance:
            while epoch < tc.epochs:
                model.train()
                losses = []
                plateau = plateau_scale(history, factor=tc.plateau_factor, patience=tc.plateau_patience,
                                        mode=mode if len(val) else "min")
                for _ in range(tc.iterations_per_epoch):
                    # keep time for the last validation (and about half as much again for the calibration)
                    if time.perf_counter() - start + val_seconds * (1.5 if tc.calibrate else 1.0) >= budget:
                        stop_reason = "time limit"
                        break
                    lr = learning_rate(tc.learning_rate, tc.lr_schedule, fraction=fraction_done(), step=iteration,
                                       warmup_fraction=tc.warmup_fraction, decay_rate=tc.lr_decay_rate,
                                       decay_steps=tc.lr_decay_steps, plateau=plateau)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    x, y, w = batches.next()
                    x, y = route.prepare_input(torch.from_numpy(x).to(device)), torch.from_numpy(y).to(device)
                    wmap = torch.from_numpy(w).to(device) if w is not None else None
                    with autocast(device, dtype):
                        logits = model(x)
                    if criterion is None:
                        criterion = (multi_head(base_criterion, list(logits), aux_weights)
                                     if isinstance(logits, dict) else base_criterion)
                    loss = criterion(logits, match_target(logits, y),
                                     weight_map=None if wmap is None else match_target(logits, wmap))
                    if semi is not None:
                        loss = loss + semi.loss(model, fraction=fraction_done())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if ema is not None:
                        ema.update(model)
                    if semi is not None:
                        semi.update(model)
                    losses.append(loss.item())
                    iteration += 1
                    advance(completed=100 * fraction_done(), status=f"epoch {epoch + 1} loss {np.mean(losses):.3f}")
                if not losses:
                    break
                epoch += 1
                record: dict[str, Any] = {"epoch": epoch, "iteration": iteration,
                                          "elapsed_s": round(time.perf_counter() - start, 2),
                                          "lr": optimizer.param_groups[0]["lr"], "train_loss": float(np.mean(losses)),
                                          "route": route.name, **(semi.metrics() if semi is not None else {})}
                val_iou = float("nan")
                if len(val):
                    t0 = time.perf_counter()
                    model.eval()
                    kept: list[np.ndarray] | None = [] if tc.calibrate else None
                    result, scores = validate(predictor, val, num_classes=num_classes, background=config.data.background,
                                              loss=base_criterion, weight_maps=val_wmaps,
                                              rng=np.random.default_rng([tc.seed, epoch]), keep=kept)
                    val_seconds = time.perf_counter() - t0
                    val_iou = result.mean_iou
                    value = scores[metric]
                    score = value if mode == "max" else -value
                    record.update(val_mean_iou=_nan_to_none(val_iou),
                                  val_mean_iou_foreground=_nan_to_none(result.mean_iou_foreground),
                                  val_iou={c: _nan_to_none(v["iou"]) for c, v in result.per_class.items()},
                                  **{k: _nan_to_none(v) for k, v in scores.items() if k != "val_mean_iou"})
                    history.append(_nan_to_none(value))
                else:
                    score = -float(np.mean(losses))  # no validation data: keep the lowest training loss
                    history.append(-score)
                _metrics_line(out_dir / METRICS_FILENAME, record)
                improved = not math.isnan(score) and score > best
                if improved:
                    best, best_epoch, best_iou = score, epoch, val_iou
                    best_scores = kept if len(val) else None
                training = {"epoch": epoch, "iteration": iteration, "elapsed_s": time.perf_counter() - start,
                            "best_epoch": best_epoch, "best_val_mean_iou": _nan_to_none(best_iou if len(val) else float("nan")),
                            "val_mean_iou": _nan_to_none(val_iou), "checkpoint_metric": metric,
                            "best_score": _nan_to_none(best), "history": history,
                            "config": config.model_dump(mode="json"), "route": route_choice.to_dict(),
                            **({"budget": budget_choice} if budget_choice else {})}
                ckpt = _checkpoint(config, backend="torch", state=scored.state_dict(), normalizer=normalizer,
                                   in_channels=in_channels, training=training, divisor=model_divisor(model))
                resumable = {"optimizer": optimizer.state_dict(), "rng": _random_states(batches, device)}
                if ema is not None:  # "state" holds the average; the optimiser goes on from the raw weights
                    resumable.update(train_state=model.state_dict(), ema=ema.state_dict())
                if semi is not None:
                    resumable["semi"] = semi.state_dict()
                # Order of writes: last.pt first, then model.pt. last.pt is the record of the run: an epoch
                # counts once its last.pt is written (its metrics line before it is dropped on resume
                # otherwise). A kill between the two writes leaves model.pt one best behind, and last.pt then
                # holds that very best epoch (best_epoch == epoch, same weights), so resume and Ctrl-C rewrite
                # model.pt from it (restore_best). The other order could leave a model.pt of an epoch that
                # last.pt never recorded: resume would redo that epoch and, if it scored lower, keep a model.pt
                # whose weights no record describes.
                with writing(out_dir / LAST_FILENAME, resumable=out_dir / LAST_FILENAME):
                    save_checkpoint(out_dir / LAST_FILENAME, {**ckpt, **resumable})
                if improved:
                    with writing(out_dir / MODEL_FILENAME, resumable=out_dir / LAST_FILENAME):
                        save_checkpoint(out_dir / MODEL_FILENAME, ckpt)
                logger.info("epoch %d: loss %.4f%s", epoch, record["train_loss"],
                            (f", val mean IoU {val_iou:.3f}" + (f", {metric} {history[-1]:.4g}" if metric != "val_mean_iou" and history[-1] is not None else "")
                             + f" (best epoch {best_epoch})") if len(val) else "")
                if stop_reason == "time limit":
                    break
                stop = _early_stop(tc, epoch=epoch, best_epoch=best_epoch, val_iou=val_iou if len(val) else None)
                if stop:
                    stop_reason = stop
                    break
    except KeyboardInterrupt:
        if not (out_dir / LAST_FILENAME).is_file():
            logger.warning("interrupted before the first epoch finished: nothing saved in %s", out_dir)
            raise
        last = load_checkpoint(out_dir / LAST_FILENAME)  # the epochs written; Ctrl-C may have hit between two writes
        restore_best(out_dir, last)
        done = last["training"]
        logger.warning("interrupted after epoch %d: the best checkpoint (epoch %d) is %s, the state to resume "
                       "from is %s", done["epoch"], done["best_epoch"], out_dir / MODEL_FILENAME,
                       out_dir / LAST_FILENAME)
        raise TrainingInterrupted(out_dir, epochs=done["epoch"], best_epoch=done["best_epoch"]) from None
    finally:
        batches.close()
    if best_epoch == 0:
        raise RuntimeError(
            f"training stopped before the first epoch finished (max_minutes={tc.max_minutes}); "
            f"raise training.max_minutes or lower training.iterations_per_epoch"
        )
    calibration = None
    if tc.calibrate and len(val):
        calibration = _calibrate(out_dir, val, best_scores, predictor=predictor, num_classes=num_classes,
                                 background=config.data.background)
    best_value = best if mode == "max" else -best
    return _finish(out_dir, best_epoch=best_epoch, best=best_iou if len(val) else float("nan"), epochs=epoch,
                   elapsed=time.perf_counter() - start, reason=stop_reason, metric=metric,
                   best_metric=best_value if len(val) else float("nan"), calibration=calibration,
                   run_info={"route": route_choice.to_dict(), **({"budget": budget_choice} if budget_choice else {})})


def _early_stop(tc: Any, *, epoch: int, best_epoch: int, val_iou: float | None) -> str | None:
    """``"early stopping"`` (patience), ``"abandoned"`` (Guay's rule) or ``None`` to go on."""
    if tc.early_stopping_patience is not None and epoch - best_epoch >= tc.early_stopping_patience:
        logger.info("no improvement for %d epochs: early stopping", epoch - best_epoch)
        return "early stopping"
    rule = tc.abandon_below
    if rule is not None and val_iou is not None and epoch == rule.epochs and not (val_iou >= rule.score):
        logger.warning("validation mean IoU %.3f < %.3f after %d epochs: run abandoned", val_iou, rule.score, epoch)
        return "abandoned"
    return None

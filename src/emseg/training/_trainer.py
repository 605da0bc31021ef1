"""The training loop: patches in, best checkpoint out, one metrics.jsonl line per epoch."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from emseg import __version__
from emseg._device import autocast, default_device, resolve_precision
from emseg.config import Config, load_config
from emseg.data import (
    IGNORE_INDEX,
    LabelledSlices,
    LabelledVolumes,
    Normalizer,
    PatchSampler,
    augment_batch,
    augment_volume_batch,
    class_frequencies,
)
from emseg.evaluation import EvaluationResult, confusion_matrix
from emseg.inference._predictor import Predictor
from emseg.models import MODELS, build_model, count_parameters, model_divisor
from emseg.training._checkpoint import MODEL_FILENAME, load_checkpoint, save_checkpoint
from emseg.training._losses import DiceCELoss
from emseg.training._spatial import (
    evaluate_volumes,
    inference_metadata,
    load_data,
    match_target,
    resolve_patch_size,
    volume_sampler,
    with_aux_heads,
)

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "train", "class_weights_from_frequencies"]

LAST_FILENAME = "last.pt"


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


def class_weights_from_frequencies(freqs: np.ndarray) -> np.ndarray:
    """``1 / sqrt(frequency)``, scaled to mean 1 over the classes present; 0 for absent classes."""
    weights = np.zeros_like(freqs, dtype=np.float64)
    present = freqs > 0
    weights[present] = 1.0 / np.sqrt(freqs[present])
    weights[present] /= weights[present].mean()
    return weights.astype(np.float32)


def _prepare_run_dir(out_dir: Path, *, overwrite: bool, resume: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not (overwrite or resume):
        raise FileExistsError(
            f"run directory {out_dir} is not empty; choose another --out, pass --overwrite to start again "
            f"or --resume to continue"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:
        for name in (MODEL_FILENAME, LAST_FILENAME, "metrics.jsonl", "summary.json"):
            (out_dir / name).unlink(missing_ok=True)


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
        "inference": {"window": [512, 512], "overlap": 0.25, "divisor": divisor, **inference_metadata(config)},
        "state": state,
        "training": training,
    }


def _metrics_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")


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
        out_dir: run directory; receives ``model.pt`` (best by validation mean
            IoU), ``last.pt`` (for ``resume``), ``metrics.jsonl`` (one line per
            epoch), ``config.yaml`` and ``summary.json``.
        overwrite: start again in a non-empty run directory.
        resume: continue from ``last.pt`` in ``out_dir``.
        progress: show a progress bar (only on a terminal).

    Returns:
        A :class:`TrainResult`. ``Ctrl-C`` stops training early and keeps the
        best checkpoint written so far.
    """
    if not isinstance(config, Config):
        config = load_config(config)
    out_dir = Path(out_dir)
    train_data, val_data = load_data(config)  # all data checks before anything is written; 3-D: sub-stacks
    _prepare_run_dir(out_dir, overwrite=overwrite, resume=resume)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    spec = MODELS.get(config.model.name)
    if spec.backend == "random-forest":
        return _train_forest(config, out_dir, train_data, val_data)
    return _train_torch(config, out_dir, train_data, val_data, resume=resume, progress=progress)


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
    save_checkpoint(out_dir / MODEL_FILENAME, _checkpoint(config, backend="random-forest", state=forest.state_dict(),
                                                        normalizer=normalizer, in_channels=1, training=training))
    elapsed = time.perf_counter() - start
    return _finish(out_dir, best_epoch=1, best=score, epochs=1, elapsed=elapsed, reason="fitted")


def _finish(out_dir: Path, *, best_epoch: int, best: float, epochs: int, elapsed: float, reason: str) -> TrainResult:
    result = TrainResult(out_dir, out_dir / MODEL_FILENAME, best_epoch, best, epochs, elapsed, reason)
    summary = {"model": str(result.model_path), "best_epoch": best_epoch, "best_val_mean_iou": _nan_to_none(best),
               "epochs": epochs, "elapsed_s": round(elapsed, 1), "stop_reason": reason}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("training stopped (%s) after %d epochs, %.0f s; best epoch %d, val mean IoU %s -> %s",
                reason, epochs, elapsed, best_epoch, f"{best:.3f}" if not math.isnan(best) else "n/a", result.model_path)
    return result


def _train_torch(config: Config, out_dir: Path, train_data: LabelledSlices, val_data: LabelledSlices, *,
                 resume: bool, progress: bool) -> TrainResult:
    from emseg._progress import progress_bar

    tc = config.training
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    device = default_device()
    dtype = resolve_precision(tc.precision, device)
    num_classes = len(config.data.classes)
    in_channels = config.model.context_slices

    normalizer = Normalizer.fit(train_data.images)
    if isinstance(train_data, LabelledVolumes):  # 3-D model: (z, y, x) patches of sub-stacks
        sampler, augment = volume_sampler(config, train_data, normalizer, rng), augment_volume_batch
    else:
        norm_images = [normalizer(im) if im.ndim == 3 else normalizer(im)[None] for im in train_data.images]
        sampler = PatchSampler(norm_images, train_data.labels, patch_size=resolve_patch_size(config), num_classes=num_classes,
                               background=config.data.background, foreground_oversampling=tc.foreground_oversampling, rng=rng)
        augment = augment_batch
    freqs = class_frequencies(train_data.labels, num_classes)
    if tc.class_weights == "auto":
        weights = torch.from_numpy(class_weights_from_frequencies(freqs))
    elif tc.class_weights is None:
        weights = None
    else:
        weights = torch.tensor(tc.class_weights, dtype=torch.float32)
    criterion = DiceCELoss(class_weights=weights, dice_weight=tc.dice_weight, ce_weight=tc.ce_weight).to(device)
    model = build_model(config.model.name, in_channels=in_channels, num_classes=num_classes,
                        options=config.model.options).to(device)
    criterion = with_aux_heads(criterion, model)  # hybrid2d3d: 3-D loss + c2d x 2-D head loss
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    predictor = Predictor(model, classes=config.data.classes, normalizer=normalizer, context_slices=in_channels,
                          device=device, precision=tc.precision, divisor=model_divisor(model),
                          window_3d=inference_metadata(config).get("window_3d"))
    val = val_data if tc.val_max_slices is None else val_data.take(list(range(min(len(val_data), tc.val_max_slices))))
    logger.info("model %s: %.2f M parameters; %d training slices, %d validation slices; precision %s; "
                "class weights %s", config.model.name, count_parameters(model) / 1e6, len(train_data), len(val),
                "fp32" if dtype is None else str(dtype).removeprefix("torch."),
                None if weights is None else [round(float(w), 2) for w in weights])

    budget = tc.max_minutes * 60.0
    total_iters = tc.epochs * tc.iterations_per_epoch
    epoch, iteration, elapsed_before = 0, 0, 0.0
    best, best_epoch = -math.inf, 0
    if resume:
        last = out_dir / LAST_FILENAME
        if not last.is_file():
            raise FileNotFoundError(f"cannot resume: {last} does not exist (start without --resume)")
        state = load_checkpoint(last)
        model.load_state_dict(state["state"])
        optimizer.load_state_dict(state["optimizer"])
        info = state["training"]
        epoch, iteration, elapsed_before = info["epoch"], info["iteration"], info["elapsed_s"]
        best = info["best_val_mean_iou"] if info["best_val_mean_iou"] is not None else -math.inf
        best_epoch = info["best_epoch"]
        rng = np.random.default_rng([tc.seed, epoch])
        sampler.rng = rng
        logger.info("resuming %s at epoch %d", out_dir, epoch)

    start = time.perf_counter() - elapsed_before
    val_seconds = 0.0
    stop_reason = "epochs"

    def fraction_done() -> float:
        return min(1.0, max((time.perf_counter() - start) / budget, iteration / total_iters))

    try:
        with progress_bar("Training", total=100, unit="%", enabled=progress) as advance:
            while epoch < tc.epochs:
                model.train()
                losses = []
                for _ in range(tc.iterations_per_epoch):
                    if time.perf_counter() - start + val_seconds >= budget:
                        stop_reason = "time limit"
                        break
                    if tc.lr_schedule == "cosine":
                        for group in optimizer.param_groups:
                            group["lr"] = tc.learning_rate * 0.5 * (1 + math.cos(math.pi * fraction_done()))
                    x, y = sampler.sample(tc.batch_size)
                    x, y = augment(x, y, tc.augment, rng)
                    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
                    with autocast(device, dtype):
                        logits = model(x)
                    loss = criterion(logits, match_target(logits, y))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                    iteration += 1
                    advance(completed=100 * fraction_done(), status=f"epoch {epoch + 1} loss {np.mean(losses):.3f}")
                if not losses:
                    break
                epoch += 1
                record: dict[str, Any] = {"epoch": epoch, "iteration": iteration,
                                          "elapsed_s": round(time.perf_counter() - start, 2),
                                          "lr": optimizer.param_groups[0]["lr"], "train_loss": float(np.mean(losses))}
                if len(val):
                    t0 = time.perf_counter()
                    model.eval()
                    result = _evaluate_slices(predictor, val, num_classes, config.data.background)
                    val_seconds = time.perf_counter() - t0
                    score = result.mean_iou
                    record.update(val_mean_iou=_nan_to_none(score),
                                  val_mean_iou_foreground=_nan_to_none(result.mean_iou_foreground),
                                  val_iou={c: _nan_to_none(v["iou"]) for c, v in result.per_class.items()})
                else:
                    score = -float(np.mean(losses))  # no validation data: keep the lowest training loss
                _metrics_line(out_dir / "metrics.jsonl", record)
                improved = not math.isnan(score) and score > best
                if improved:
                    best, best_epoch = score, epoch
                training = {"epoch": epoch, "iteration": iteration, "elapsed_s": time.perf_counter() - start,
                            "best_epoch": best_epoch, "best_val_mean_iou": _nan_to_none(best if len(val) else float("nan")),
                            "val_mean_iou": _nan_to_none(score if len(val) else float("nan")),
                            "config": config.model_dump(mode="json")}
                ckpt = _checkpoint(config, backend="torch", state=model.state_dict(), normalizer=normalizer,
                                   in_channels=in_channels, training=training, divisor=model_divisor(model))
                if improved:
                    save_checkpoint(out_dir / MODEL_FILENAME, ckpt)
                save_checkpoint(out_dir / LAST_FILENAME, {**ckpt, "optimizer": optimizer.state_dict()})
                logger.info("epoch %d: loss %.4f%s", epoch, record["train_loss"],
                            f", val mean IoU {score:.3f} (best {best:.3f} at epoch {best_epoch})" if len(val) else "")
                if stop_reason == "time limit":
                    break
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        logger.warning("interrupted: the best checkpoint so far is kept in %s", out_dir)
        if best_epoch == 0:
            raise
    if best_epoch == 0:
        raise RuntimeError(
            f"training stopped before the first epoch finished (max_minutes={tc.max_minutes}); "
            f"raise training.max_minutes or lower training.iterations_per_epoch"
        )
    return _finish(out_dir, best_epoch=best_epoch, best=best if len(val) else float("nan"), epochs=epoch,
                   elapsed=time.perf_counter() - start, reason=stop_reason)

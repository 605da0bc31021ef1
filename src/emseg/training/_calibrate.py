"""Calibration of a trained network: at the end of a run (:class:`CalibrateAtEnd`) or afterwards
(:func:`calibrate`, ``emseg calibrate``); the fitting itself is ``_calibration.fit_logit_offsets``."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from emseg.config import load_config
from emseg.data import IGNORE_INDEX
from emseg.inference import Predictor
from emseg.models import MODEL_FILENAME, load_checkpoint, save_checkpoint
from emseg.training._calibration import fit_logit_offsets
from emseg.training._loop import Callback, TrainingLoop
from emseg.training._run_dir import writing
from emseg.training._spatial import load_data
from emseg.training._validation import validate, validation_subset

logger = logging.getLogger(__name__)

__all__ = ["CalibrateAtEnd", "calibrate", "calibrate_run"]


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
    val = validation_subset(val_data, tc.val_max_slices)
    if not len(val):
        raise ValueError(f"{config_path}: no validation data to calibrate on (set data.val or data.val_fraction)")
    predictor = Predictor.from_checkpoint_dict(ckpt, calibrated=False, precision=tc.precision)
    info = calibrate_run(run_dir, val, None, predictor=predictor, num_classes=len(config.data.classes),
                         background=config.data.background)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary["calibration"] = info
    summary_path.write_text(json.dumps(summary, indent=2))
    return info


def calibrate_run(out_dir: Path, val: Any, scores: list[np.ndarray] | None, *, predictor: Predictor, num_classes: int,
                  background: int | None) -> dict[str, Any]:
    """Fit the logit offsets on the validation data with the best checkpoint and store them in it."""
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


class CalibrateAtEnd(Callback):
    """``training.calibrate``: fit the logit offsets of ``model.pt`` once the run has ended (``info``: what
    ``summary.json`` records), from the best epoch's kept validation scores when this run has them."""

    def __init__(self, out_dir: Path, val: Any, *, validation: Any, predictor: Predictor, num_classes: int,
                 background: int | None) -> None:
        self.out_dir, self.val, self.validation, self.predictor = out_dir, val, validation, predictor
        self.num_classes, self.background = num_classes, background
        self.info: dict[str, Any] | None = None

    def on_train_end(self, loop: TrainingLoop) -> None:
        self.info = calibrate_run(self.out_dir, self.val, self.validation.best_scores, predictor=self.predictor,
                                  num_classes=self.num_classes, background=self.background)

"""The random forest's training path: fitted in one go on the training slices, scored once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from emseg.config import Config
from emseg.data import IGNORE_INDEX, LabelledSlices, LabelledVolumes, Normalizer
from emseg.evaluation import EvaluationResult, confusion_matrix
from emseg.inference import Predictor
from emseg.models import MODEL_FILENAME, build_model, save_checkpoint
from emseg.training._callbacks import nan_to_none
from emseg.training._checkpointing import checkpoint_dict, metrics_line
from emseg.training._result import TrainResult, finish
from emseg.training._run_dir import writing
from emseg.training._spatial import evaluate_volumes

__all__ = ["evaluate_slices", "train_forest"]


def evaluate_slices(predictor: Predictor, val: LabelledSlices, num_classes: int, background: int | None) -> EvaluationResult:
    """Validation scores of a predictor on labelled slices (3-D models: sliding window over the sub-stacks)."""
    if isinstance(val, LabelledVolumes):
        return evaluate_volumes(predictor, val, num_classes, background)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for image, labels in zip(val.images, val.labels):
        pred = predictor.predict_proba_slice(image).argmax(0)
        confusion += confusion_matrix(pred, labels, num_classes=num_classes, ignore_label=IGNORE_INDEX)
    return EvaluationResult.from_confusion(confusion, classes=predictor.classes, background=background)


def train_forest(config: Config, out_dir: Path, train_data: LabelledSlices, val_data: LabelledSlices) -> TrainResult:
    """Fit the random forest on the training slices, score it on the validation slices, write the run."""
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
        result = evaluate_slices(predictor, val_data, len(config.data.classes), config.data.background)
        score = result.mean_iou
        record.update(val_mean_iou=nan_to_none(result.mean_iou), val_mean_iou_foreground=nan_to_none(result.mean_iou_foreground),
                      val_iou={c: nan_to_none(v["iou"]) for c, v in result.per_class.items()})
    metrics_line(out_dir / "metrics.jsonl", record)
    training = {"epoch": 1, "val_mean_iou": nan_to_none(score), "config": config.model_dump(mode="json")}
    with writing(out_dir / MODEL_FILENAME):
        save_checkpoint(out_dir / MODEL_FILENAME, checkpoint_dict(config, backend="random-forest", state=forest.state_dict(),
                                                                normalizer=normalizer, in_channels=1, training=training))
    elapsed = time.perf_counter() - start
    return finish(out_dir, best_epoch=1, best=score, epochs=1, elapsed=elapsed, reason="fitted")

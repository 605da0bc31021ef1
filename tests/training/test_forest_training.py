"""The random-forest baseline trains and predicts through the same train/predict path."""

from __future__ import annotations

import numpy as np
import tifffile

import emseg
from emseg.inference import Predictor

from conftest import EPFL_CLASSES


def test_random_forest_through_train_and_predict(tmp_path, epfl_crop):
    cfg = tmp_path / "rf.yaml"
    cfg.write_text(f"""
data:
  train: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "0:3"}}
  val: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "3"}}
  classes: {EPFL_CLASSES}
model: {{name: random-forest, n_estimators: 8, samples_per_class: 500, sigmas: [1.0, 3.5]}}
""")
    result = emseg.train(cfg, tmp_path / "run", progress=False)
    assert result.best_val_mean_iou > 0.2
    predictor = Predictor.from_checkpoint(tmp_path / "run")
    assert not predictor.is_torch and predictor.classes == EPFL_CLASSES
    emseg.predict(tmp_path / "run", epfl_crop["raw"], tmp_path / "pred.tif", progress=False)
    pred = tifffile.imread(tmp_path / "pred.tif")
    truth = tifffile.imread(epfl_crop["labels"])
    assert pred.shape == truth.shape
    scores = emseg.evaluate(pred[3:], truth[3:], classes=EPFL_CLASSES)
    assert abs(scores.mean_iou - result.best_val_mean_iou) < 1e-9  # validation == prediction path


def test_random_forest_respects_ignore_label(tmp_path, epfl_crop):
    lab = tifffile.imread(epfl_crop["labels"])
    lab[:, :, :128] = 255
    tifffile.imwrite(tmp_path / "lab.tif", lab, photometric="minisblack")
    cfg = tmp_path / "rf.yaml"
    cfg.write_text(f"""
data:
  train: {{image: {epfl_crop['raw']}, labels: {tmp_path / 'lab.tif'}, slices: "0:3"}}
  classes: {EPFL_CLASSES}
  ignore_label: 255
  val_fraction: 0
model: {{name: random-forest, n_estimators: 4, samples_per_class: 200, sigmas: [1.0]}}
""")
    emseg.train(cfg, tmp_path / "run", progress=False)
    predictor = Predictor.from_checkpoint(tmp_path / "run")
    assert predictor.model.sample_counts_.sum() <= 7 * 200
    assert np.isfinite(predictor.predict_proba_slice(tifffile.imread(epfl_crop["raw"])[0])).all()

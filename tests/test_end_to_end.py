"""End to end on real EM: the demo trains briefly on the embedded EPFL crop and must beat
the trivial all-majority-class predictor by a clear margin on the held-out crop."""

from __future__ import annotations

import numpy as np

from emseg._demo import run_demo, sample_path
from emseg.io import read_image


def test_sample_data_ships_with_attribution():
    readme = sample_path("README.md").read_text()
    assert "Lucchi" in readme and "zhixuhao/unet" in readme
    raw, labels = read_image(sample_path("train_raw.tif")), read_image(sample_path("train_labels.tif"))
    assert raw.shape == labels.shape and labels.max() == 6


def test_short_training_beats_majority_predictor(tmp_path):
    # A fixed number of steps (6 epochs of 25 batches, ~90 s here) so the result does not depend on machine speed.
    outcome = run_demo(tmp_path, minutes=10, epochs=6, progress=False)
    result, baseline = outcome["result"], outcome["baseline"]
    print(f"demo: mean IoU {result.mean_iou:.3f} vs majority {baseline.mean_iou:.3f}; "
          f"foreground {result.mean_iou_foreground:.3f} vs {baseline.mean_iou_foreground:.3f}; "
          f"mitochondrion {result.per_class['mitochondrion']['iou']:.3f}")
    assert outcome["prediction"].is_file() and outcome["scores"].is_file()
    # The majority predictor gets background right and nothing else (mean IoU ~0.09).
    assert result.mean_iou >= baseline.mean_iou + 0.15, (result.mean_iou, baseline.mean_iou)
    assert result.mean_iou_foreground >= baseline.mean_iou_foreground + 0.15
    assert result.per_class["mitochondrion"]["iou"] > 0.5
    pred = read_image(outcome["prediction"])
    assert pred.shape == read_image(sample_path("test_raw.tif")).shape
    assert len(np.unique(pred)) >= 3

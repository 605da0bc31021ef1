"""``emseg demo``: train on the embedded EPFL crop, segment the held-out crop, score it."""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from emseg.evaluation import evaluate
from emseg.inference import predict
from emseg.io import read_image
from emseg.training import train

logger = logging.getLogger(__name__)

__all__ = ["demo_config", "run_demo", "sample_path"]


def sample_path(name: str = "") -> Path:
    """Path of the embedded sample folder, or of one file in it (e.g. ``"test_raw.tif"``)."""
    folder = Path(str(resources.files("emseg.data") / "sample"))
    return folder / name if name else folder


def demo_config(minutes: float, *, epochs: int | None = None) -> dict[str, Any]:
    """The configuration the demo trains with (a plain dict, as a YAML file would hold)."""
    classes = json.loads(sample_path("classes.json").read_text())
    return {
        "data": {
            "train": {"image": str(sample_path("train_raw.tif")), "labels": str(sample_path("train_labels.tif")),
                      "slices": "0:5"},
            "val": {"image": str(sample_path("train_raw.tif")), "labels": str(sample_path("train_labels.tif")),
                    "slices": "5"},
            "classes": classes,
        },
        "model": {"name": "unet2d"},
        "training": {"max_minutes": minutes, "batch_size": 4, "patch_size": 192, "iterations_per_epoch": 25,
                     "learning_rate": 2e-3, "seed": 0, **({"epochs": epochs} if epochs else {})},
    }


def run_demo(out_dir: str | os.PathLike = "emseg-demo", *, minutes: float = 5.0, epochs: int | None = None,
             progress: bool = True, overwrite: bool = True) -> dict[str, Any]:
    """Train ``unet2d`` for ``minutes`` (or ``epochs`` of 25 steps) on the sample, segment its test crop, evaluate.

    Returns a dict with the paths written and the :class:`~emseg.evaluation.EvaluationResult`.
    """
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "demo.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(minutes, epochs=epochs), sort_keys=False))
    run = train(config_path, out / "run", overwrite=overwrite, progress=progress)
    prediction = out / "test_prediction.tif"
    probabilities = out / "test_probabilities.tif"
    predict(run.run_dir, sample_path("test_raw.tif"), prediction, probabilities=probabilities,
            overwrite=overwrite, progress=progress)
    classes = demo_config(minutes)["data"]["classes"]
    result = evaluate(prediction, sample_path("test_labels.tif"), classes=classes)
    result.save_json(out / "test_scores.json")
    truth = read_image(sample_path("test_labels.tif"))
    majority = np.full_like(truth, np.bincount(read_image(sample_path("train_labels.tif")).ravel()).argmax())
    baseline = evaluate(majority, truth, classes=classes)
    return {"run": run, "config": config_path, "prediction": prediction, "probabilities": probabilities,
            "scores": out / "test_scores.json", "result": result, "baseline": baseline}

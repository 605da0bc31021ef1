"""Training a tiny model, then predicting slices, stacks and 2-D images from the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

import emseg
from emseg.inference import Predictor
from emseg.io import read_image


def test_run_directory_contents(tiny_run):
    names = {p.name for p in tiny_run.run_dir.iterdir()}
    assert {"model.pt", "last.pt", "metrics.jsonl", "config.yaml", "summary.json"} <= names
    lines = [json.loads(line) for line in (tiny_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert set(lines[0]["val_iou"]) == {"background", "membrane", "mitochondrion", "mitochondrial_boundary",
                                         "vesicle", "psd", "axon"}


def test_checkpoint_rebuilds_model_and_preprocessing(tiny_run, epfl_crop):
    predictor = Predictor.from_checkpoint(tiny_run.run_dir)
    assert predictor.classes[2] == "mitochondrion"
    raw = read_image(epfl_crop["raw"])
    probs = predictor.predict_proba_slice(raw[0])
    assert probs.shape == (7, *raw.shape[1:])
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    # the stored normalisation is the one of the training slices
    assert predictor.normalizer.mean == pytest.approx(float(raw[:3].mean()), rel=1e-6)


def test_predict_stack_writes_labels_and_probabilities(tiny_run, epfl_crop, tmp_path):
    out = emseg.predict(tiny_run.run_dir, epfl_crop["raw"], tmp_path / "pred.tif",
                        probabilities=tmp_path / "probs.tif", progress=False)
    labels = tifffile.imread(out)
    assert labels.shape == (4, 192, 256) and labels.dtype == np.uint8 and labels.max() < 7
    probs = tifffile.imread(tmp_path / "probs.tif")
    assert probs.shape == (4, 7, 192, 256)
    np.testing.assert_array_equal(probs.argmax(1), labels)


def test_predict_2d_png_gives_2d_output(tiny_run, epfl_crop, tmp_path):
    from emseg.io import write_image

    write_image(tmp_path / "slice.png", read_image(epfl_crop["raw"])[0, :100, :130])
    emseg.predict(tiny_run.run_dir, tmp_path / "slice.png", tmp_path / "labels.h5:seg",
                  probabilities=tmp_path / "probs.zarr", progress=False)
    labels = read_image(tmp_path / "labels.h5:seg")
    assert labels.shape == (1, 100, 130)
    import h5py

    with h5py.File(tmp_path / "labels.h5") as f:
        assert f["seg"].shape == (100, 130)
    assert read_image(tmp_path / "probs.zarr/mitochondrion").shape == (1, 100, 130)


def test_existing_output_is_not_overwritten(tiny_run, epfl_crop, tmp_path):
    (tmp_path / "pred.tif").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        emseg.predict(tiny_run.run_dir, epfl_crop["raw"], tmp_path / "pred.tif", progress=False)
    assert (tmp_path / "pred.tif").read_bytes() == b"keep me"


def test_interrupted_prediction_leaves_no_output(tiny_run, epfl_crop, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = Predictor._slice_input  # every slice read, whether slices run one per forward pass or several

    def failing(self, volume, z):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, volume, z)

    monkeypatch.setattr(Predictor, "_slice_input", failing)
    with pytest.raises(KeyboardInterrupt):
        emseg.predict(tiny_run.run_dir, epfl_crop["raw"], tmp_path / "pred.tif", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_resume_continues_training(tiny_run, tmp_path):
    import shutil

    from emseg.config import load_config

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    cfg = load_config(run / "config.yaml", overrides={"training": {"epochs": 3}})
    result = emseg.train(cfg, run, resume=True, progress=False)
    assert result.epochs == 3
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_run_directory_is_not_clobbered(tiny_run):
    with pytest.raises(FileExistsError, match="--overwrite"):
        emseg.train(tiny_run.run_dir / "config.yaml", tiny_run.run_dir, progress=False)

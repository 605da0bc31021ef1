"""The `emseg` command: every subcommand runs, bad input exits 2 with a readable message."""

from __future__ import annotations

import json

import numpy as np
import tifffile
from typer.testing import CliRunner

from emseg.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "predict", "evaluate", "demo", "models"):
        assert command in result.output


def test_models_lists_registry():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "unet2d" in result.output and "random-forest" in result.output


def test_train_predict_evaluate(tmp_path, tiny_config, epfl_crop):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(tiny_config), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (run / "model.pt").is_file()
    result = runner.invoke(app, ["predict", str(run), str(epfl_crop["raw"]), str(tmp_path / "pred.tif"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert tifffile.imread(tmp_path / "pred.tif").shape == (4, 192, 256)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "pred.tif"), str(epfl_crop["labels"]),
                                 "--model", str(run), "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert "mitochondrion" in result.output and "confusion matrix" in result.output
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["classes"][2] == "mitochondrion"


def test_evaluate_with_class_names_and_ignore_label(tmp_path):
    truth = np.array([[[0, 1, 255], [1, 1, 0]]], np.uint8)
    pred = np.array([[[0, 1, 1], [1, 0, 0]]], np.uint8)
    tifffile.imwrite(tmp_path / "t.tif", truth, photometric="minisblack")
    tifffile.imwrite(tmp_path / "p.tif", pred, photometric="minisblack")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "t.tif"), "--classes", "bg,mito",
                                 "--ignore-label", "255", "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "s.json").read_text())
    # truth/pred over 5 labelled pixels: mito TP=2, FN=1, FP=0 -> IoU 2/3; bg TP=2, FP=1 -> 2/3
    assert scores["per_class"]["mito"]["iou"] == 2 / 3
    assert scores["per_class"]["bg"]["iou"] == 2 / 3


def test_bad_inputs_exit_2_with_message(tmp_path, tiny_config):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {train: {image: nowhere.tif, labels: nowhere.tif}, classes: [a, b]}\n")
    result = runner.invoke(app, ["train", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "nowhere.tif" in result.output and "file not found" in result.output
    assert not (tmp_path / "r").exists()
    result = runner.invoke(app, ["predict", str(tmp_path), "x.tif", "y.tif"])
    assert result.exit_code == 2 and "model.pt" in result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "a.xyz"), str(tmp_path / "b.tif")])
    assert result.exit_code == 2 and "a.xyz" in result.output

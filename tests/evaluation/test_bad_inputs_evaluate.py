"""`emseg evaluate` on bad input: a message naming the file/option, the problem and the fix; exit 2, no
traceback, no --json file; and user text (paths, class names) printed literally (no emoji codes, no markup)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from emseg.cli import app

runner = CliRunner()
TRUTH = np.array([[[0, 1, 2], [1, 1, 0]]], np.uint8)


def _tif(path, array):
    tifffile.imwrite(path, array, photometric="minisblack")
    return str(path)


def _refused(args, json_out, *needles):
    result = runner.invoke(app, ["evaluate", *args, "--json", str(json_out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    assert not json_out.exists()
    return result.output


@pytest.mark.parametrize("which", ["prediction", "ground truth"])
def test_out_of_range_labels_name_the_file_values_classes_and_option(tmp_path, which):
    bad = TRUTH.copy()
    bad[0, 0, :2] = [5, 7]
    good_path, bad_path = _tif(tmp_path / "good.tif", TRUTH), _tif(tmp_path / "bad.tif", bad)
    pred, truth = (bad_path, good_path) if which == "prediction" else (good_path, bad_path)
    output = _refused([pred, truth, "--classes", "a,b,c"], tmp_path / "s.json",
                      f"{which} {bad_path}", "5, 7", "3 classes", "--classes a,b,c", "valid labels 0 to 2",
                      "at least 8 names")
    assert "num_classes" not in output and "ignore_label=" not in output  # no Python argument names
    # one unexpected value in the truth: the likely 'unlabelled' marker is offered as --ignore-label
    bad[0, 0, :2] = 255
    _tif(tmp_path / "bad.tif", bad)
    if which == "ground truth":
        _refused([pred, truth, "--classes", "a,b,c"], tmp_path / "s.json", "255", "--ignore-label 255")


def test_negative_labels_without_class_list(tmp_path):
    neg = _tif(tmp_path / "neg.tif", np.full((1, 2, 3), -1, np.int16))
    _refused([neg, _tif(tmp_path / "t.tif", TRUTH)], tmp_path / "s.json",
             f"prediction {neg}", "negative label values -1", "class indices")


def test_model_classes_too_few_for_the_labels(tmp_path, tiny_run):
    bad = TRUTH.copy()
    bad[0, 0, 0] = 9  # the tiny run has 7 classes
    pred = _tif(tmp_path / "p.tif", bad)
    _refused([pred, _tif(tmp_path / "t.tif", TRUTH), "--model", str(tiny_run.run_dir)], tmp_path / "s.json",
             f"prediction {pred}", "label values 9", f"7 classes of model {tiny_run.run_dir}", "--classes")


def test_empty_label_images_refused_naming_the_files(tmp_path):
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f["pred"] = np.zeros((0, 3, 3), np.uint8)
        f["truth"] = np.zeros((2, 0, 3), np.uint8)
    _refused([f"{tmp_path / 'e.h5'}:pred", f"{tmp_path / 'e.h5'}:truth"], tmp_path / "s.json",
             f"prediction {tmp_path / 'e.h5'}:pred (shape (0, 3, 3))",
             f"ground truth {tmp_path / 'e.h5'}:truth (shape (2, 0, 3))", "no pixel to score")


def test_everything_ignored_refused(tmp_path):
    truth = _tif(tmp_path / "t.tif", np.full(TRUTH.shape, 255, np.uint8))
    _refused([_tif(tmp_path / "p.tif", TRUTH), truth, "--ignore-label", "255"], tmp_path / "s.json",
             f"every pixel of ground truth {truth} equals --ignore-label 255", "no pixel to score")


def test_model_and_classes_disagreeing_refused(tmp_path, tiny_run):
    pred = _tif(tmp_path / "p.tif", TRUTH)
    _refused([pred, pred, "--model", str(tiny_run.run_dir), "--classes", "a,b,c"], tmp_path / "s.json",
             "--classes and --model name different classes", "a, b, c", str(tiny_run.run_dir), "mitochondrion",
             "Pass only one of them")
    # the same names from both sources: accepted
    from emseg.training import load_checkpoint

    names = ",".join(load_checkpoint(tiny_run.run_dir)["classes"])
    result = runner.invoke(app, ["evaluate", pred, pred, "--model", str(tiny_run.run_dir), "--classes", names])
    assert result.exit_code == 0, result.output


def test_emoji_codes_and_markup_in_paths_and_names_printed_literally(tmp_path):
    folder = tmp_path / ":smile: [bold]x"
    folder.mkdir()
    pred = _tif(folder / "p.tif", TRUTH)
    out = folder / ":thumbs_up:.json"
    result = runner.invoke(app, ["evaluate", pred, pred, "--classes", ":cat:,[red]b,c", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert f"scores: {out}" in result.output and ":cat:" in result.output and "[red]b" in result.output
    assert f"{folder}" in result.output  # ":smile: [bold]x" as typed
    assert "\N{CAT FACE}" not in result.output
    assert json.loads(out.read_text())["classes"][0] == ":cat:"
    # error messages (stderr console, which keeps markup for its own prefix) too
    missing = str(folder / ":smile:.tif")
    result = runner.invoke(app, ["evaluate", missing, pred])
    assert result.exit_code == 2 and missing in result.output  # the literal ":smile:" twice, no emoji

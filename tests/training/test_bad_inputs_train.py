"""Bad inputs to `emseg train` (issue 16): one message naming the file/key/option, the problem and the fix;
no traceback; exit 2 (warnings: exit 0); nothing written that looks like a run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

import emseg
from conftest import EPFL_CLASSES
from emseg.cli import app

TINY = "max_minutes: 0.5, epochs: 1, iterations_per_epoch: 1, batch_size: 2, patch_size: 64, precision: fp32"


def _write(tmp_path: Path, raw: np.ndarray, labels: np.ndarray, *, classes=EPFL_CLASSES, model="{name: unet2d, features: [4, 8]}",
           training: str = TINY, val: str = '"3"', train: str = '"0:3"') -> Path:
    tifffile.imwrite(tmp_path / "raw.tif", raw, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    path = tmp_path / "c.yaml"
    path.write_text(f"""data:
  train: {{image: raw.tif, labels: labels.tif, slices: {train}}}
  val: {{image: raw.tif, labels: labels.tif, slices: {val}}}
  classes: {list(classes)}
model: {model}
training: {{{training}}}
""")
    return path


def _train(*args: str):
    result = CliRunner().invoke(app, ["train", *map(str, args)])
    return result, " ".join(result.output.split())


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def test_resume_with_another_network_is_refused_and_changes_nothing(tmp_path, tiny_run, epfl_crop):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    before = _files(run)
    other = tmp_path / "wider.yaml"
    other.write_text((tiny_run.run_dir.parent / "c.yaml").read_text().replace("features: [4, 8]", "features: [8, 16]"))
    result, text = _train(other, "--out", run, "--resume")
    assert result.exit_code == 2 and "Traceback" not in result.output and "size mismatch" not in text
    assert f"cannot resume {run} with {other}" in text and str(run / "config.yaml") in text
    assert "model.features: [4, 8] in the run, [8, 16] now" in text
    assert f"emseg train {run / 'config.yaml'} --out {run} --resume" in text and "new --out" in text
    assert _files(run) == before  # config.yaml, model.pt, last.pt, metrics.jsonl untouched
    # the fix works: the run's own configuration resumes it
    result, text = _train(run / "config.yaml", "--out", run, "--resume", "-q")
    assert result.exit_code == 0, text


def test_resume_from_a_damaged_last_pt_says_how_to_start_again(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    (run / "last.pt").write_bytes(b"not a checkpoint")
    result, text = _train(run / "config.yaml", "--out", run, "--resume")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"cannot resume: {run / 'last.pt'} could not be loaded" in text and "--overwrite" in text


def test_nan_in_training_images_is_refused_before_the_run_directory_exists(tmp_path, epfl_crop):
    raw = tifffile.imread(epfl_crop["raw"]).astype(np.float32)
    raw[1, 5, 5] = np.nan
    raw[2, :2, :3] = np.inf
    cfg = _write(tmp_path, raw, tifffile.imread(epfl_crop["labels"]))
    result, text = _train(cfg, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "Traceback" not in result.output and "Input contains NaN" not in text
    assert f"data.train: image {tmp_path / 'raw.tif'} contains 7 NaN or infinite pixels in 2 slice(s) (z=1: 1, z=2: 6)" in text
    assert "data.train.slices" in text
    assert not (tmp_path / "run").exists()  # a rerun needs no --overwrite


def test_nan_in_random_forest_training_images_is_refused_too(tmp_path, epfl_crop):
    raw = tifffile.imread(epfl_crop["raw"]).astype(np.float32)
    raw[3, 0, 0] = np.nan  # the validation slice
    cfg = _write(tmp_path, raw, tifffile.imread(epfl_crop["labels"]), model="{name: random-forest, n_estimators: 2}")
    result, text = _train(cfg, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "data.val: image" in text and "1 NaN or infinite pixels" in text
    assert not (tmp_path / "run").exists()


def test_patch_larger_than_the_images_is_shrunk_with_a_warning(tmp_path, epfl_crop, caplog):
    raw = tifffile.imread(epfl_crop["raw"])[:, :40, :50]
    cfg = _write(tmp_path, raw, tifffile.imread(epfl_crop["labels"])[:, :40, :50])
    emseg.train(cfg, tmp_path / "run", progress=False)
    said = " ".join(caplog.text.split())
    assert ("training.patch_size [64, 64] is larger than the training images (the largest training image is "
            "40 x 50 pixels (y x)): training on [40, 50] patches") in said
    assert emseg.load_config(tmp_path / "run" / "config.yaml").training.patch_size == [40, 50]  # what was used


def test_images_too_small_to_train_on_get_one_clear_message(tmp_path):
    raw = np.full((4, 1, 1), 100, np.uint8)
    cfg = _write(tmp_path, raw, np.array([0, 1, 0, 1], np.uint8).reshape(4, 1, 1), classes=["background", "membrane"])
    result, text = _train(cfg, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "TIFF holds an array of shape (4, 1, 1)" not in text  # was: "...; emseg reads (Z, Y, X) images"
    assert ("data.train: the training images are 1 x 1 pixels (y x) at most" in text
            and "at least 16 x 16 pixels" in text and "use larger images" in text)
    assert not (tmp_path / "run").exists()


def test_classes_absent_from_the_labels_are_named(tmp_path, epfl_crop, caplog):
    labels = tifffile.imread(epfl_crop["labels"])
    labels[labels == 4] = 1  # no vesicle anywhere; psd is absent from this crop already
    cfg = _write(tmp_path, tifffile.imread(epfl_crop["raw"]), labels)
    emseg.train(cfg, tmp_path / "run", progress=False)
    said = " ".join(caplog.text.split())
    assert "data.train: no training pixel has the class vesicle (4), psd (5) of data.classes" in said
    assert "data.val: no validation pixel has the class vesicle (4), psd (5)" in said
    assert "IoU of these classes is not measured" in said


def test_labels_with_only_background_warn_instead_of_a_silent_perfect_score(tmp_path, isbi_crop, caplog):
    raw = tifffile.imread(isbi_crop["raw"])
    cfg = _write(tmp_path, raw, np.zeros_like(raw), classes=["interior", "membrane"], val='"6:8"', train='"0:6"')
    emseg.train(cfg, tmp_path / "run", progress=False)  # may score "val mean IoU 1.000" on the one class
    said = " ".join(caplog.text.split())
    assert "no training pixel has the class membrane (1)" in said and "no validation pixel has the class membrane (1)" in said


def test_max_minutes_zero_names_the_option_not_the_file(tmp_path, tiny_config):
    result, text = _train(tiny_config, "--out", tmp_path / "run", "--max-minutes", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--max-minutes must be a number of minutes above 0, got 0" in text
    assert "invalid configuration" not in text and not (tmp_path / "run").exists()

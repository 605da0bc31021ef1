"""emseg propagate (4S along z) on a 6-section ISBI crop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from emseg.cli import app
from emseg.training import next_sections, propagate


@pytest.mark.parametrize("covered, step, expected", [
    ({2, 3}, 1, [1, 4]),
    ({2, 3}, 2, [0, 1, 4, 5]),
    ({0}, 1, [1]),
    ({1, 4}, 1, [0, 2, 3, 5]),  # two runs grow on both sides
    ({0, 1, 2, 3, 4, 5}, 1, []),
])
def test_next_sections(covered, step, expected):
    assert next_sections(covered, list(range(6)), step=step) == expected


@pytest.fixture
def stack6(tmp_path, isbi_crop):
    raw, lab = tifffile.imread(isbi_crop["raw"])[:6], tifffile.imread(isbi_crop["labels"])[:6]
    tifffile.imwrite(tmp_path / "raw6.tif", raw)
    tifffile.imwrite(tmp_path / "lab6.tif", lab)
    cfg = tmp_path / "prop.yaml"
    cfg.write_text("""
data:
  train: {image: raw6.tif, labels: lab6.tif, slices: "2,3"}
  classes: [interior, membrane]
  val_fraction: 0
model: {name: unet2d, features: [4, 8]}
training: {max_minutes: 0.5, epochs: 2, iterations_per_epoch: 4, batch_size: 2, patch_size: 64, learning_rate: 0.01}
""")
    return cfg, lab


def test_propagation_round_covers_the_next_sections_and_resumes(tmp_path, stack6):
    cfg, truth = stack6
    out = tmp_path / "prop"
    first = propagate(cfg, out, threshold=0.7, max_rounds=1, progress=False)
    assert [r["added"] for r in first.rounds] == [[], [1, 4]]
    assert first.covered == [1, 2, 3, 4]
    pseudo = tifffile.imread(out / "round-01" / "pseudo_labels.tif")
    confidence = tifffile.imread(out / "round-01" / "confidence.tif")
    assert pseudo.shape == confidence.shape == (2, 96, 96)
    np.testing.assert_array_equal(pseudo != 255, confidence >= 0.7)  # confident pixels only, the rest ignored
    assert 0 < np.mean(pseudo != 255) < 1
    assert set(np.unique(pseudo)) <= {0, 1, 255}
    trained_on = tifffile.imread(out / "round-01" / "train_labels.tif")
    np.testing.assert_array_equal(trained_on[[2, 3]], truth[[2, 3]])  # real labels untouched
    np.testing.assert_array_equal(trained_on[[1, 4]], pseudo)
    assert (trained_on[[0, 5]] == 255).all()
    meta = json.loads((out / "round-01" / "round.json").read_text())
    assert meta["from_model"].endswith("round-00/run")
    round1 = (out / "round-01" / "run" / "model.pt").stat().st_mtime_ns

    done = propagate(cfg, out, threshold=0.7, progress=False)  # the same command again: resumes
    assert (out / "round-01" / "run" / "model.pt").stat().st_mtime_ns == round1  # finished rounds kept
    assert [r["added"] for r in done.rounds] == [[], [1, 4], [0, 5]]
    labels = tifffile.imread(done.labels_path)
    assert labels.shape == (6, 96, 96)
    np.testing.assert_array_equal(labels[[2, 3]], truth[[2, 3]])
    summary = json.loads((out / "propagation.json").read_text())
    assert summary["complete"] and summary["sections"] == list(range(6))
    assert (out / "model.pt").is_file()


def test_propagation_stops_at_the_range(tmp_path, stack6):
    cfg, _ = stack6
    result = CliRunner().invoke(app, ["propagate", str(cfg), "--out", str(tmp_path / "p"), "--range", "1:5",
                                      "--threshold", "0.55,0.6", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "p" / "propagation.json").read_text())
    assert [r["added"] for r in summary["rounds"]] == [[], [1, 4]]
    assert tifffile.imread(tmp_path / "p" / "labels.tif").shape == (4, 96, 96)


def test_propagation_bad_options(tmp_path, stack6):
    cfg, _ = stack6
    result = CliRunner().invoke(app, ["propagate", str(cfg), "--out", str(tmp_path / "p"), "--range", "0:2,4:6", "-q"])
    assert result.exit_code == 2 and "not one contiguous run" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["propagate", str(cfg), "--out", str(tmp_path / "p"), "--range", "3:6", "-q"])
    assert result.exit_code == 2 and "leaves out the labelled sections [2]" in result.output
    result = CliRunner().invoke(app, ["propagate", str(cfg), "--out", str(tmp_path / "p"), "--threshold", "1.5", "-q"])
    assert result.exit_code == 2 and "--threshold" in result.output
    assert not (tmp_path / "p").exists()

"""emseg.active.ActiveSession: corrections stored as training labels, round configurations (no training here;
tests/napari/test_napari_finetune.py trains a round)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from emseg.active import ActiveSession


def _volume():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (4, 32, 40), dtype=np.uint8), rng.integers(0, 7, (4, 32, 40), dtype=np.uint8)


def test_corrections_store_only_the_named_slices_with_unsure_as_ignore(tiny_run, tmp_path):
    session = ActiveSession(tmp_path / "s", base_run=tiny_run.run_dir)
    assert session.ignore_label == 255 and session.classes[0] == "background"
    raw, labels = _volume()
    labels[2, :5, :5] = 7  # "unsure"
    folder = session.add_corrections(raw, labels, [2, 0], image_name="em stack/1", unsure=7)
    assert folder.name == "001-em_stack_1"
    np.testing.assert_array_equal(tifffile.imread(folder / "raw.tif"), raw[[0, 2]])
    stored = tifffile.imread(folder / "labels.tif")
    assert stored.shape == (2, 32, 40) and (stored[1, :5, :5] == 255).all()
    np.testing.assert_array_equal(stored[0], labels[0])
    assert [e["slices"] for e in session.corrections()] == [[0, 2]]
    assert ActiveSession(tmp_path / "s").corrections()[0]["image"] == "em stack/1"  # reopened from session.json


def test_correction_refusals(tiny_run, tmp_path):
    session = ActiveSession(tmp_path / "s", base_run=tiny_run.run_dir)
    raw, labels = _volume()
    labels[1, 3, 4] = 9
    with pytest.raises(ValueError, match=r"slice 1 of 'em' has label 9 at \(y=3, x=4\), which is neither a class"):
        session.add_corrections(raw, labels, [1], image_name="em", unsure=7)
    with pytest.raises(ValueError, match="no corrected slice"):
        session.add_corrections(raw, labels, [], image_name="em")
    with pytest.raises(ValueError, match="outside the image"):
        session.add_corrections(raw, labels, [4], image_name="em")
    with pytest.raises(ValueError, match="do not match the image"):
        session.add_corrections(raw, labels[:, :10], [0], image_name="em")
    assert session.corrections() == []  # nothing half-stored
    with pytest.raises(ValueError, match="no corrections in this session yet"):
        session.round_config(tiny_run.model_path, minutes=1)


def test_round_config_adds_corrections_to_the_base_data_latest_correction_wins(tiny_run, tmp_path):
    session = ActiveSession(tmp_path / "s", base_run=tiny_run.run_dir)
    raw, labels = _volume()
    first = session.add_corrections(raw, labels, [0, 1], image_name="em")
    second = session.add_corrections(raw, labels, [1, 3], image_name="em")  # slice 1 corrected again
    config = session.round_config(tiny_run.model_path, minutes=0.5, repeat=2)
    base = ActiveSession(tmp_path / "s").base_run
    assert base == tiny_run.run_dir.resolve()
    train = [(s.image, s.labels, s.slices) for s in config.data.train]
    assert train[0][2] == "0:3"  # the base run's own training data first
    assert train[1:] == [(str(first / "raw.tif"), str(first / "labels.tif"), "0")] * 2 + \
                        [(str(second / "raw.tif"), str(second / "labels.tif"), "0,1")] * 2
    assert config.data.ignore_label == 255 and config.data.val[0].slices == "3"
    assert config.model.init == str(tiny_run.model_path.resolve()) and config.training.max_minutes == 0.5


def test_a_model_without_its_run_cannot_start_a_session(tiny_run, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(tiny_run.model_path, lone / "model.pt")
    with pytest.raises(ValueError, match="config.yaml .* is missing"):
        ActiveSession(tmp_path / "s", base_run=lone / "model.pt")
    with pytest.raises(ValueError, match="is not an emseg session"):
        ActiveSession(tmp_path / "other")

"""Correct & fine-tune and Suggest widgets: painted slices become training labels, a round moves the labels
of the corrected slice towards the correction; suggestions jump to the slice."""

from __future__ import annotations

import json

import numpy as np
import tifffile
import torch

from tests.conftest import EPFL


def _wait(qtbot, widget, timeout=180_000):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def test_paint_add_and_fine_tune_moves_the_corrected_slice_towards_the_correction(make_napari_viewer, qtbot,
                                                                                 tiny_run, tmp_path):
    from emseg.inference import load_predictor
    from emseg.models import load_checkpoint
    from emseg.napari._finetune import FineTuneWidget
    from emseg.napari._segment import SegmentWidget

    raw = tifffile.imread(EPFL / "test_raw.tif")[:2, 300:428, 300:460]
    truth = tifffile.imread(EPFL / "test_labels.tif")[:2, 300:428, 300:460]
    viewer = make_napari_viewer()
    image = viewer.add_image(raw, name="em")
    segment = SegmentWidget(viewer)
    segment.model.value, segment.image.value = tiny_run.run_dir, image
    segment.segment()
    _wait(qtbot, segment)
    predicted = viewer.layers[-1]
    before = np.asarray(predicted.data).copy()

    tune = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(tune)
    tune.labels_layer.value = predicted
    assert tune.image.value is image and tune.unsure.value == 7  # one past the 7 classes
    tune.session_dir.value = tmp_path / "session"
    # the user paints slice 1: the true labels, and "unsure" on a 10 x 10 corner
    painted = before.copy()
    painted[1] = truth[1]
    painted[1, :10, :10] = 7
    predicted.data = painted
    folder = tune.add_slices()
    assert folder is not None and json.loads((folder / "info.json").read_text())["slices"] == [1]  # slice 0: unlabelled
    stored = tifffile.imread(folder / "labels.tif")
    assert stored.shape == (128, 160) and (stored[:10, :10] == 255).all()  # unsure -> ignore label
    np.testing.assert_array_equal(stored[10:], truth[1, 10:])
    assert tune.add_slices() is None  # nothing newly painted: refused with a message
    assert "nothing painted" in tune.status.value

    tune.minutes.value = 1.0
    tune.overrides = {"training": {"epochs": 2, "iterations_per_epoch": 5}}
    tune.fine_tune()
    _wait(qtbot, tune)
    result = viewer.layers[-1]
    assert result.name == f"{tiny_run.run_dir.name} round-1", tune.status.value
    round_dir = tmp_path / "session" / "round-1"
    record = json.loads((round_dir / "round.json").read_text())
    assert record["round"] == 1 and record["corrections"][0]["slices"] == [1]
    assert (round_dir / "config.yaml").is_file() and (round_dir / "summary.json").is_file()
    # the model changed ...
    old, new = load_checkpoint(tiny_run.model_path)["state"], load_checkpoint(round_dir / "model.pt")["state"]
    assert any(not torch.equal(old[k], new[k]) for k in old)
    # ... towards the correction: on the corrected pixels, the probability of the painted class rose, and the
    # new labels agree with the correction on more of them
    corrected = (painted[1] != before[1]) & (painted[1] != 7)
    ys, xs = np.nonzero(corrected)
    cls = painted[1][corrected]
    p_before = load_predictor(tiny_run.run_dir, overlap="auto").predict_proba_slice(raw[1])[cls, ys, xs].mean()
    p_after = load_predictor(round_dir, overlap="auto").predict_proba_slice(raw[1])[cls, ys, xs].mean()
    assert p_after > p_before
    after = np.asarray(result.data)
    assert (after[1][corrected] == cls).mean() > (before[1][corrected] == cls).mean() == 0.0


def test_suggest_widget_ranks_the_noise_slice_first_and_jumps_to_it(make_napari_viewer, qtbot, tiny_run):
    from emseg.napari._suggest_widget import SuggestWidget

    volume = tifffile.imread(EPFL / "test_raw.tif")[:4, 300:428, 300:460].copy()
    volume[2] = np.random.default_rng(0).integers(0, 256, volume[2].shape, dtype=np.uint8)
    viewer = make_napari_viewer()
    image = viewer.add_image(volume, name="em")
    viewer.dims.set_current_step(0, 0)
    widget = SuggestWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model.value, widget.image.value, widget.k.value = tiny_run.run_dir, image, 3
    widget.suggest()
    _wait(qtbot, widget)
    assert [s.z for s in widget.suggestions][0] == 2 and len(widget.suggestions) == 3
    assert widget.suggestions[0].method == "tta"
    assert viewer.dims.current_step[0] == 2  # jumped to the best slice
    widget.results.value = 1
    assert viewer.dims.current_step[0] == widget.suggestions[1].z
    assert "score" in widget.status.value

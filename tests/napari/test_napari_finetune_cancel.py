"""Correct & fine-tune: Cancel stops a running round; the round is removed, not offered as the current model,
no labels layer is added and a notification says what happened; the viewer answers while the round runs."""

from __future__ import annotations

import numpy as np
import tifffile

from tests.conftest import EPFL


def test_cancel_stops_the_round_and_keeps_the_current_model(make_napari_viewer, qtbot, tiny_run, tmp_path,
                                                            monkeypatch):
    import emseg.napari._finetune as finetune
    from emseg.napari._common import labels_layer_kwargs

    notes = []
    monkeypatch.setattr(finetune, "show_info", notes.append)
    raw = tifffile.imread(EPFL / "test_raw.tif")[:2, 300:428, 300:460]
    truth = tifffile.imread(EPFL / "test_labels.tif")[:2, 300:428, 300:460]
    viewer = make_napari_viewer()
    image = viewer.add_image(raw, name="em")
    classes = [f"c{i}" for i in range(7)]
    labels = viewer.add_labels(truth.astype(np.uint8),
                               **labels_layer_kwargs("em labels", classes, model=str(tiny_run.model_path), image="em"))
    tune = finetune.FineTuneWidget(viewer)
    tune.labels_layer.value, tune.image.value = labels, image
    tune.session_dir.value = tmp_path / "session"
    session = tune.session()
    session.add_corrections(raw, truth, [1], image_name="em")
    tune.minutes.value = 10.0
    tune.overrides = {"training": {"epochs": 10_000, "iterations_per_epoch": 2}}  # runs until cancelled
    layers = len(viewer.layers)

    worker = tune.fine_tune()
    assert worker is not None and tune.cancel_button.enabled and not tune.tune_button.enabled
    round_dir = tmp_path / "session" / "round-1"
    qtbot.waitUntil(lambda: (round_dir / "last.pt").is_file(), timeout=180_000)  # an epoch finished
    tune.cancel()
    assert tune.status.value == "cancelling ..."  # the main thread answers while the round runs
    qtbot.waitUntil(lambda: tune.worker is None, timeout=120_000)

    assert not round_dir.exists() and session.rounds() == []  # removed, not a round
    assert session.current_model() == tiny_run.model_path  # still the model the session had
    assert len(viewer.layers) == layers  # no labels layer of the cancelled round
    assert tune.status.value.startswith("fine-tuning cancelled: round-1 was removed"), tune.status.value
    assert len(notes) == 1 and "fine-tuning cancelled" in notes[0] and str(tiny_run.model_path) in notes[0]
    assert tune.tune_button.enabled and tune.add_button.enabled and not tune.cancel_button.enabled

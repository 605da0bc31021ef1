"""The Segment widget: labels equal to `emseg predict`, blockwise into a zarr beside the input, Cancel, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from tests.conftest import EPFL_CLASSES

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "emseg" / "data" / "sample" / "test_raw.tif"


def _widget(viewer, run_dir):
    from emseg.napari._segment import SegmentWidget

    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="emseg: Segment")
    widget.model.value = run_dir
    return widget


def _wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def test_segment_widget_equals_emseg_predict_on_the_embedded_sample(make_napari_viewer, qtbot, tiny_run, tmp_path):
    from typer.testing import CliRunner

    from emseg.cli._main import app

    sample = tmp_path / "sample.tif"
    shutil.copy(SAMPLE, sample)
    result = CliRunner().invoke(app, ["predict", str(tiny_run.run_dir), str(sample), str(tmp_path / "cli.tif"), "-q"])
    assert result.exit_code == 0, result.output
    expected = tifffile.imread(tmp_path / "cli.tif")

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(sample), plugin="emseg")
    widget = _widget(viewer, tiny_run.run_dir)
    widget.image.value = image
    worker = widget.segment()
    assert worker is not None
    _wait(qtbot, widget)
    layer = viewer.layers[-1]
    assert layer._type_string == "labels" and layer.name == tiny_run.run_dir.name  # named after the model
    assert list(layer.features["class"]) == EPFL_CLASSES
    assert layer.data.shape == expected.shape == (2, 384, 512)
    np.testing.assert_array_equal(layer.data, expected)
    assert len(np.unique(expected)) > 1  # not a trivial all-one-class answer
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.tif", "sample.tif"]  # a TIFF: in memory, no zarr


def test_segment_widget_chunked_image_goes_blockwise_into_a_zarr_beside_it(make_napari_viewer, qtbot, tiny_run,
                                                                          tmp_path):
    from emseg.inference import predict
    from emseg.io import write_image

    volume = tifffile.imread(SAMPLE)
    write_image(tmp_path / "stack.zarr", volume)
    predict(tiny_run.run_dir, tmp_path / "stack.zarr", tmp_path / "ref.tif", progress=False)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(tmp_path / "stack.zarr"), plugin="emseg")
    widget = _widget(viewer, tiny_run.run_dir)
    widget.image.value = image
    widget.block = (1, 384, 512)  # one slice per block: two steps of the engine
    steps = []
    worker = widget.segment()
    worker.yielded.connect(steps.append)
    _wait(qtbot, widget)
    out = tmp_path / f"stack_{tiny_run.run_dir.name}.zarr"
    assert steps == [(1, 2), (2, 2)]
    assert zarr.open_array(str(out), mode="r").attrs["emseg"]["status"] == "complete"
    layer = viewer.layers[-1]
    assert layer.name == tiny_run.run_dir.name and type(layer.data).__module__.startswith("dask")  # lazy
    assert list(layer.features["class"]) == EPFL_CLASSES
    np.testing.assert_array_equal(np.asarray(layer.data), tifffile.imread(tmp_path / "ref.tif"))


@pytest.mark.parametrize("route", ["in-memory", "blockwise"])
def test_cancel_stops_and_leaves_no_half_written_output(make_napari_viewer, qtbot, tiny_run, tmp_path, route):
    from emseg.io import write_image

    volume = np.concatenate([tifffile.imread(SAMPLE)] * 2)  # 4 slices
    viewer = make_napari_viewer()
    if route == "blockwise":
        write_image(tmp_path / "stack.zarr", volume)
        (image,) = viewer.open(str(tmp_path / "stack.zarr"), plugin="emseg")
    else:
        image = viewer.add_image(volume, name="stack")
    widget = _widget(viewer, tiny_run.run_dir)
    widget.image.value = image
    widget.block = (1, 128, 128)  # 48 blocks
    seen = []

    def cancel_at_first(value):
        seen.append(value)
        widget.cancel()

    worker = widget.segment()
    worker.yielded.connect(cancel_at_first)
    _wait(qtbot, widget)
    # stopped long before the end (the worker may finish the step it was on while the cancel is delivered)
    assert 1 <= len(seen) <= 2 and seen[-1][0] < seen[-1][1], seen
    assert [layer.name for layer in viewer.layers] == [image.name]  # no labels layer
    assert sorted(p.name for p in tmp_path.iterdir()) == (["stack.zarr"] if route == "blockwise" else [])
    assert "cancelled" in widget.status.value


def test_errors_are_notifications_not_a_frozen_viewer(make_napari_viewer, qtbot, tiny_run, tmp_path):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    image = viewer.add_image(tifffile.imread(SAMPLE)[0], name="slice")
    rgb = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="colour", rgb=True)
    bad_model = tmp_path / "model.pt"
    bad_model.write_bytes(b"not a checkpoint")
    widget = _widget(viewer, bad_model)
    widget.image.value = image
    before = len(notification_manager.records)
    assert widget.segment() is not None  # the model is loaded in the worker: its error arrives as a notification
    _wait(qtbot, widget)
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any(str(bad_model) in m for m in messages), messages
    widget.model.value = tiny_run.run_dir
    widget.image.value = rgb
    assert widget.segment() is None  # refused at once
    assert "is RGB" in str(notification_manager.records[-1].message)
    assert "error" in widget.status.value and widget.run_button.enabled
    assert [layer._type_string for layer in viewer.layers] == ["image", "image"]

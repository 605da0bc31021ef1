"""The emseg napari reader: predicted zarr labels with class names and colours, probabilities, any EM image."""

from __future__ import annotations

import numpy as np
import tifffile
import zarr

from tests.conftest import EPFL, EPFL_CLASSES


def _stack(tmp_path, z=2):
    image = tmp_path / "stack.tif"
    tifffile.imwrite(image, tifffile.imread(EPFL / "test_raw.tif")[:z, 300:428, 300:460], photometric="minisblack")
    return image


def test_reader_opens_predicted_zarr_with_class_names_and_colours(make_napari_viewer, tiny_run, tmp_path):
    from emseg.inference import predict
    from emseg.napari._colors import class_colors

    image = _stack(tmp_path)
    out = predict(tiny_run.run_dir, image, tmp_path / "labels.zarr", progress=False)
    viewer = make_napari_viewer()
    layers = viewer.open(str(out), plugin="emseg")
    assert len(layers) == 1 and layers[0]._type_string == "labels"
    layer = layers[0]
    assert list(layer.features["class"]) == EPFL_CLASSES
    np.testing.assert_array_equal(np.asarray(layer.data), zarr.open_array(str(out), mode="r")[:])
    assert type(layer.data).__module__.startswith("dask")  # lazy
    expected = class_colors(EPFL_CLASSES)
    for label in (1, 2, 3):  # the fixed class colours, as RGBA
        from napari.utils.colormaps.standardize_color import transform_color

        np.testing.assert_allclose(layer.colormap.map(label), transform_color(expected[label])[0], atol=1e-6)
    assert layer.colormap.map(0)[3] == 0  # background transparent
    assert layer.metadata["emseg"]["status"] == "complete"


def test_reader_opens_ome_zarr_pyramid_lazily_as_multiscale(make_napari_viewer, tiny_run, tmp_path):
    from emseg.inference import predict

    image = tmp_path / "big.tif"
    tifffile.imwrite(image, tifffile.imread(EPFL / "test_raw.tif")[:2, :512, :512], photometric="minisblack")
    out = predict(tiny_run.run_dir, image, tmp_path / "labels.zarr", ome_zarr=True, progress=False)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(out), plugin="emseg")
    assert layer.multiscale and len(layer.data) >= 2
    assert list(layer.features["class"]) == EPFL_CLASSES
    assert layer.data[0].shape == (2, 512, 512)


def test_reader_opens_probabilities_as_one_image_layer_per_class(make_napari_viewer, tiny_run, tmp_path):
    from emseg.inference import predict

    image = _stack(tmp_path)
    for probs in ("p.tif", "p.zarr"):
        predict(tiny_run.run_dir, image, tmp_path / f"l_{probs}.tif", probabilities=tmp_path / probs, progress=False)
        viewer = make_napari_viewer()
        layers = viewer.open(str(tmp_path / probs), plugin="emseg")
        names = [layer.metadata["emseg"]["probabilities"] for layer in layers]
        # the TIFF keeps the class order; a container's arrays have none (sorted by name)
        assert names == (EPFL_CLASSES if probs.endswith(".tif") else sorted(EPFL_CLASSES)), probs
        total = sum(np.asarray(layer.data, np.float64) for layer in layers)
        np.testing.assert_allclose(total, 1.0, atol=1e-3)  # probabilities of each pixel sum to 1 over the classes
        assert all(layer._type_string == "image" and layer.data.shape == (2, 128, 160) for layer in layers)


def test_reader_opens_every_emseg_image_format(make_napari_viewer, tmp_path):
    from emseg.io import write_image

    from tests.io.test_n5 import _write_n5

    volume = tifffile.imread(EPFL / "test_raw.tif")[:3, :64, :80]
    write_image(tmp_path / "v.tif", volume)
    write_image(f"{tmp_path / 'v.h5'}:raw", volume)
    write_image(tmp_path / "v.zarr", volume)
    _write_n5(tmp_path / "v.n5", "raw", volume, (1, 32, 32), compression="gzip")
    (tmp_path / "pngs").mkdir()
    for z in range(3):
        write_image(tmp_path / "pngs" / f"s{z}.png", volume[z])
    import mrcfile

    mrcfile.write(tmp_path / "v.mrc", volume)
    opened = {"tif": "v.tif", "h5": "v.h5", "zarr": "v.zarr", "n5": "v.n5/raw", "mrc": "v.mrc", "png folder": "pngs"}
    viewer = make_napari_viewer()
    for kind, name in opened.items():
        layers = viewer.open(str(tmp_path / name), plugin="emseg")
        assert len(layers) == 1 and layers[0]._type_string == "image", kind
        np.testing.assert_array_equal(np.asarray(layers[0].data), volume, err_msg=kind)
        if kind in ("h5", "zarr", "n5"):  # chunked: read chunk by chunk as napari displays them
            assert type(layers[0].data).__module__.startswith("dask"), kind


def test_reader_declines_what_it_cannot_open(tmp_path):
    from emseg.napari._reader import napari_get_reader

    (tmp_path / "notes.txt").write_text("hello")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None

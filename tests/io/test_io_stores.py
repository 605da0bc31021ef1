"""emseg.io's label stores, OME-Zarr pyramids, probability-map files, CSV rows and the positive-tuple check."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from emseg.io import (
    create_label_store,
    open_image,
    open_levels,
    open_store_array,
    positive_tuple,
    read_class_probabilities,
    read_probabilities,
    read_store_attrs,
    update_store_attrs,
    write_csv_rows,
    write_label_pyramid,
    write_probabilities,
)


@pytest.mark.parametrize("ome", [False, True])
def test_label_store_attributes_round_trip(tmp_path, ome):
    store = tmp_path / "labels.zarr"
    path = create_label_store(store, shape=(4, 64, 80), chunks=(2, 32, 40), dtype=np.uint8,
                              attrs={"emseg": {"status": "running", "classes": ["a", "b"]}}, ome=ome, zarr_format=3)
    assert path == ("0" if ome else "")
    assert read_store_attrs(store, "emseg") == {"status": "running", "classes": ["a", "b"]}
    assert read_store_attrs(store, "other") is None and read_store_attrs(tmp_path / "none.zarr", "emseg") is None
    update_store_attrs(store, "emseg", status="complete")
    assert read_store_attrs(store, "emseg") == {"status": "complete", "classes": ["a", "b"]}
    array = open_store_array(store, path)
    array[1, 10:20, 10:20] = 3
    levels, multiscale = open_levels(store)
    assert multiscale is ome and int(np.asarray(levels[0][1, 15, 15])) == 3


def test_label_pyramid_levels_and_multiscales(tmp_path):
    store = tmp_path / "p.zarr"
    create_label_store(store, shape=(4, 128, 128), chunks=(2, 64, 64), dtype=np.uint8, attrs={}, ome=True,
                       zarr_format=2)
    labels = np.zeros((4, 128, 128), np.uint8)
    labels[:, :64] = 2
    open_store_array(store, "0")[...] = labels
    shapes = write_label_pyramid(store, voxel_size=(8.0, 8.0, 8.0), is_2d=False, chunks=(2, 64, 64))
    assert shapes == [(4, 128, 128), (2, 64, 64), (1, 32, 32)]  # isotropic voxels: z halves too
    levels, multiscale = open_levels(store)
    assert multiscale and [tuple(level.shape) for level in levels] == shapes
    np.testing.assert_array_equal(np.asarray(levels[1])[:, :32], 2)
    np.testing.assert_array_equal(np.asarray(levels[1])[:, 32:], 0)
    with open_image(store) as image:  # the zarr reader finds level 0 and the voxel size through the metadata
        assert image.array.shape == (4, 128, 128) and image.voxel_size == (8.0, 8.0, 8.0)


@pytest.mark.parametrize("name", ["p.tif", "p.zarr", "p.h5"])
def test_probabilities_round_trip(tmp_path, name):
    rng = np.random.default_rng(0)
    probs = rng.random((3, 2, 16, 20)).astype(np.float32)
    probs /= probs.sum(axis=0, keepdims=True)
    classes = ["background", "membrane", "mito"]
    write_probabilities(tmp_path / name, probs, classes, is_2d=False, overwrite=False)
    np.testing.assert_array_equal(read_class_probabilities(tmp_path / name, classes), probs)
    by_name = read_probabilities(tmp_path / name)
    assert sorted(by_name) == sorted(classes)
    for k, cls in enumerate(classes):
        np.testing.assert_array_equal(np.asarray(by_name[cls]), probs[k])


def test_probabilities_of_other_classes_are_refused(tmp_path):
    probs = np.full((3, 2, 8, 8), 1 / 3, np.float32)
    write_probabilities(tmp_path / "p.tif", probs, ["a", "b", "c"], is_2d=False, overwrite=False)
    with pytest.raises(ValueError, match=r"--probabilities .*p\.tif: expected 4 class channels"):
        read_class_probabilities(tmp_path / "p.tif", ["a", "b", "c", "d"])


def test_a_label_image_is_not_a_probabilities_file(tmp_path):
    from emseg.io import write_image

    write_image(tmp_path / "labels.tif", np.zeros((2, 8, 8), np.uint8))
    assert read_probabilities(tmp_path / "labels.tif") is None
    assert read_probabilities(tmp_path / "missing.zarr") is None


def test_csv_rows_written_whole(tmp_path):
    path = tmp_path / "t.csv"
    write_csv_rows(path, ["a", "b"], ([i, None if i else 0.5] for i in range(3)))
    with open(path, newline="") as handle:
        assert list(csv.reader(handle)) == [["a", "b"], ["0", "0.5"], ["1", ""], ["2", ""]]
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temporary left


@pytest.mark.parametrize("value", [[1, 2], "ab", [1, 0, 2], [1, float("nan"), 3], [-1, 2, 3]])
def test_positive_tuple_names_the_option(value):
    with pytest.raises(ValueError, match=r"block_shape must be None or three positive ints \(z, y, x\), got"):
        positive_tuple(value, name="block_shape", count=3)


def test_positive_tuple_converts():
    assert positive_tuple(None, name="x", count=3) is None
    assert positive_tuple((1, 2.0, "3"), name="x", count=3) == (1, 2, 3)
    assert positive_tuple([4, 4, 40], name="voxel_size", count=3, kind=float) == (4.0, 4.0, 40.0)

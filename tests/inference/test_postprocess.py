"""Post-processing of predicted labels (issue 22): majority (median) filter and small-object removal.

Hand-made maps with the expected result worked out by hand, then `emseg predict --median/--min-size/--post-3d`
on a real EPFL crop, and the bad values refused before any work (rows of docs/BAD_INPUTS.md).
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
from scipy import ndimage
from typer.testing import CliRunner

from emseg.cli import app
from emseg.inference import majority_filter, postprocess_labels, predict, remove_small_objects

RING = np.array([
    [0, 0, 0, 0, 0],
    [0, 1, 1, 1, 0],
    [0, 1, 0, 1, 0],
    [0, 1, 1, 1, 0],
    [0, 0, 0, 0, 2],
], np.uint8)


def test_majority_filter_hand_checked():
    # 3 x 3 windows, borders mirrored (a row/column outside the map repeats the edge one):
    # (2, 2) the hole: eight 1s and itself -> 1;  (1, 1) ring corner: 0 0 0 / 0 1 1 / 0 1 0 = six 0s -> 0;
    # (1, 2) ring edge: 0 0 0 / 1 1 1 / 1 0 1 = five 1s -> 1;  (0, 0): 0 x8, 1 x1 -> 0;
    # (4, 4) the lone 2: rows 3 4 4 x cols 3 4 4 = 1 x1, 0 x4, 2 x4: a 0/2 tie keeps the voxel's own class 2;
    # (3, 4): rows 2 3 4 x cols 3 4 4 = 1 1 1 (col 3) + 0 0 0 0 + 2 2 -> 0 x4, 1 x3, 2 x2 -> 0.
    expected = np.array([
        [0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 0, 2],
    ], np.uint8)
    got = majority_filter(RING, 3)
    assert got.dtype == RING.dtype
    np.testing.assert_array_equal(got, expected)


def test_majority_filter_is_the_median_for_two_classes():
    rng = np.random.default_rng(0)
    binary = (ndimage.gaussian_filter(rng.random((6, 30, 40)), 1.2) > 0.5).astype(np.uint8)
    for size in (3, 5):
        np.testing.assert_array_equal(majority_filter(binary, size, per_slice=True),
                                      ndimage.median_filter(binary, size=(1, size, size)))
        np.testing.assert_array_equal(majority_filter(binary, size, per_slice=False),
                                      ndimage.median_filter(binary, size=size))


def test_small_objects_vanish_big_ones_stay_multiclass():
    a = np.zeros((10, 12), np.uint8)
    a[1, 1] = 1                 # a 1-pixel class-1 object in background: removed -> 0
    a[5:7, 1:3] = 1             # 4 pixels of class 1: kept at min_size 4
    a[0:6, 6:12] = 1            # a 36-pixel class-1 region ...
    a[2, 8] = 2                 # ... holding a 1-pixel class 2 (removed -> 1, all its border is class 1)
    a[4, 9:12] = 3              # ... and a 3-pixel class 3 on its edge: border 1 x4, 0 x1 (below) -> 1
    a[8, 0:10] = 2              # a 10-pixel class 2 line: kept
    got = remove_small_objects(a, 4)
    expected = a.copy()
    expected[1, 1] = 0
    expected[2, 8] = 1
    expected[4, 9:12] = 1
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(remove_small_objects(a, 0), a)  # 0: nothing removed
    assert (remove_small_objects(a, 5)[5:7, 1:3] == 0).all()    # the 4-pixel object goes at 5


def test_touching_small_objects_decided_on_the_input_map():
    a = np.zeros((5, 5), np.uint8)
    a[2, 1] = 1
    a[2, 2] = 2   # two 1-pixel objects side by side: each borders the other (also removed) and background -> 0
    np.testing.assert_array_equal(remove_small_objects(a, 2), np.zeros_like(a))


def test_per_slice_and_3d_components_differ():
    a = np.zeros((3, 6, 6), np.uint8)
    a[:, 2, 2] = 1  # one pixel per slice, a 3-voxel column in 3-D
    assert not remove_small_objects(a, 2, per_slice=True).any()
    np.testing.assert_array_equal(remove_small_objects(a, 2, per_slice=False), a)
    np.testing.assert_array_equal(postprocess_labels(a, min_size=3, per_slice=False), a)
    assert not postprocess_labels(a, min_size=4, per_slice=False).any()


@pytest.mark.parametrize(("median", "min_size", "fragment"), [
    (2, None, "--median 2: the filter window must be an odd size >= 3"),
    (1, None, "--median 1: the filter window must be an odd size >= 3"),
    (None, -5, "--min-size -5: give a number of voxels >= 0"),
])
def test_bad_values_rejected_by_the_function(median, min_size, fragment):
    with pytest.raises(ValueError, match=fragment.replace("+", r"\+")):
        postprocess_labels(RING, median=median, min_size=min_size)


# ------------------------------------------------------------------------------------- through emseg predict


def _cli(*args):
    return CliRunner().invoke(app, ["predict", *map(str, args), "--quiet"])


def test_predict_postprocess_cli_on_a_real_crop(tiny_run, epfl_crop, tmp_path):
    plain, post = tmp_path / "plain.tif", tmp_path / "post.h5"
    assert _cli(tiny_run.run_dir, epfl_crop["raw"], plain).exit_code == 0
    result = _cli(tiny_run.run_dir, epfl_crop["raw"], post, "--median", "3", "--min-size", "20")
    assert result.exit_code == 0, result.output
    raw_labels = tifffile.imread(plain)
    with h5py.File(post) as h5:
        labels = h5["data"][()]
        record = json.loads(h5["data"].attrs["emseg"])["postprocess"]
    np.testing.assert_array_equal(labels, postprocess_labels(raw_labels, median=3, min_size=20, per_slice=True))
    assert record == {"median": 3, "min_size": 20, "mode": "2d-per-slice", "filter": "majority",
                      "connectivity": "face", "small_objects_to": "bordering class"}
    for z in range(labels.shape[0]):  # no 2-D object of a foreground class below 20 pixels is left
        for k in np.unique(labels[z]):
            if k:
                comps, n = ndimage.label(labels[z] == k)
                assert np.bincount(comps.ravel())[1:].min() >= 20


def test_predict_post_3d_api(tiny_run, epfl_crop, tmp_path):
    plain = predict(tiny_run.run_dir, epfl_crop["raw"], tmp_path / "plain.tif", progress=False)
    out = predict(tiny_run.run_dir, epfl_crop["raw"], tmp_path / "post3d.tif", progress=False, median=3,
                  min_size=50, post_3d=True)
    np.testing.assert_array_equal(tifffile.imread(out), postprocess_labels(tifffile.imread(plain), median=3,
                                                                           min_size=50, per_slice=False))


# ----------------------------------------------------------------------- bad values: a message, no output


@pytest.mark.parametrize(("args", "fragment"), [
    (["--median", "2"], "--median 2: the filter window must be an odd size >= 3"),
    (["--min-size", "-1"], "--min-size -1: give a number of voxels >= 0"),
    (["--post-3d"], "--post-3d chooses 3-D post-processing, but there is none"),
])
def test_predict_bad_postprocess_values_refused(tiny_run, epfl_crop, tmp_path, args, fragment):
    out = tmp_path / "out" / "labels.tif"
    out.parent.mkdir()
    result = _cli(tiny_run.run_dir, epfl_crop["raw"], out, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert fragment in " ".join(result.output.split())
    assert list(out.parent.iterdir()) == []


def test_predict_postprocess_refused_blockwise(tiny_run, epfl_crop, tmp_path):
    out = tmp_path / "labels.zarr"
    result = _cli(tiny_run.run_dir, epfl_crop["raw"], out, "--min-size", "100")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "--min-size post-process the whole label map in memory" in text
    assert "write the labels to a .tif or .h5 output" in text
    assert not out.exists()


def test_zarr_output_with_probabilities_is_postprocessed_in_memory_and_recorded(tiny_run, epfl_crop, tmp_path):
    import zarr

    plain = predict(tiny_run.run_dir, epfl_crop["raw"], tmp_path / "plain.tif", progress=False)
    out = predict(tiny_run.run_dir, epfl_crop["raw"], tmp_path / "labels.zarr", progress=False,
                  probabilities=tmp_path / "p.tif", median=5, post_3d=True)
    node = zarr.open(str(out), mode="r")
    np.testing.assert_array_equal(node[...], majority_filter(tifffile.imread(plain), 5, per_slice=False))
    assert node.attrs["emseg"]["postprocess"]["median"] == 5
    assert node.attrs["emseg"]["postprocess"]["mode"] == "3d"


def test_slab_by_slab_equals_all_at_once(monkeypatch):
    import emseg.inference._postprocess as post

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (7, 20, 24)).astype(np.uint8)
    labels = ndimage.median_filter(labels, size=3)  # blobs of 4 classes
    whole = {(m, s, p): postprocess_labels(labels, median=m, min_size=s, per_slice=p)
             for m in (3, 5) for s in (0, 6) for p in (True, False)}
    monkeypatch.setattr(post, "SLAB", 2)  # 4 slabs, with a halo of 1-2 slices in 3-D
    for (m, s, p), expected in whole.items():
        np.testing.assert_array_equal(postprocess_labels(labels, median=m, min_size=s, per_slice=p), expected)
    binary = (labels > 1).astype(np.uint8)
    np.testing.assert_array_equal(majority_filter(binary, 5, per_slice=False), ndimage.median_filter(binary, size=5))

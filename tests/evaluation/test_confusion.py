"""confusion_matrix: hand-worked cases, agreement with scikit-learn, errors, lazy input."""

import numpy as np
import pytest
import zarr
from sklearn import metrics as skm

from emseg.evaluation import _confusion, confusion_matrix

# (prediction, truth, num_classes, ignore_label, expected confusion; rows = truth)
HAND_CASES = {
    "3x3 two classes": (
        [[0, 1, 1], [0, 1, 0], [0, 0, 0]],
        [[0, 0, 1], [0, 1, 1], [0, 0, 0]],
        2,
        None,
        [[5, 1], [1, 2]],
    ),
    "3 classes, ignored pixels, empty class": (
        # the 2 sits on an ignored pixel, so class 2 ends up empty
        [0, 1, 1, 1, 0, 2, 0, 0],
        [0, 0, 1, 1, 1, 255, 0, 255],
        3,
        255,
        [[2, 1, 0], [1, 2, 0], [0, 0, 0]],
    ),
    "class predicted but absent from truth": (
        [0, 0, 0, 2],
        [0, 0, 1, 1],
        3,
        None,
        [[2, 0, 0], [1, 0, 1], [0, 0, 0]],
    ),
    "everything ignored": ([[1, 0]], [[7, 7]], 2, 7, [[0, 0], [0, 0]]),
    "negative ignore label": ([0, 1, 1], [-1, 1, 0], 2, -1, [[0, 1], [0, 1]]),
    "boolean masks": ([True, False, True], [True, True, False], 2, None, [[0, 1], [1, 1]]),
}


@pytest.mark.parametrize("case", HAND_CASES.values(), ids=HAND_CASES.keys())
def test_hand_worked(case):
    prediction, truth, k, ignore, expected = case
    result = confusion_matrix(np.array(prediction), np.array(truth), num_classes=k, ignore_label=ignore)
    assert result.dtype == np.int64
    assert result.shape == (k, k)
    np.testing.assert_array_equal(result, expected)


def test_plain_lists_and_scalars():
    assert confusion_matrix([0, 1], [1, 1], num_classes=2).tolist() == [[0, 0], [1, 1]]
    assert confusion_matrix(np.int64(1), np.int64(1), num_classes=2).tolist() == [[0, 0], [0, 1]]


@pytest.mark.parametrize("k, shape, dtype", [(2, (3, 5, 7), np.uint8), (5, (4, 6, 6), np.int32), (7, (50,), np.uint16)])
def test_matches_sklearn(k, shape, dtype):
    rng = np.random.default_rng(k)
    truth = rng.integers(0, k, shape).astype(dtype)
    prediction = np.where(rng.random(shape) < 0.6, truth, rng.integers(0, k, shape)).astype(dtype)
    expected = skm.confusion_matrix(truth.ravel(), prediction.ravel(), labels=range(k))
    np.testing.assert_array_equal(confusion_matrix(prediction, truth, num_classes=k), expected)


def test_ignore_label_same_as_dropping_pixels():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (6, 9, 11)).astype(np.uint8)
    prediction = rng.integers(0, 4, truth.shape).astype(np.uint8)
    ignored = rng.random(truth.shape) < 0.3
    truth[ignored] = 255
    prediction[ignored & (rng.random(truth.shape) < 0.5)] = 200  # never looked at
    keep = truth != 255
    expected = skm.confusion_matrix(truth[keep], prediction[keep], labels=range(4))
    result = confusion_matrix(prediction, truth, num_classes=4, ignore_label=255)
    np.testing.assert_array_equal(result, expected)
    assert result.sum() == keep.sum()


@pytest.mark.parametrize(
    "prediction, truth, ignore, fragments",
    [
        ([0, 1, 2], [0, 1, 7], None, ["truth", "7", "[0, 3)"]),
        (np.array([0, -1, 2], np.int8), [0, 1, 2], None, ["prediction", "-1", "[0, 3)"]),
        ([0, 9, 4, 1], [0, 1, 2, 1], None, ["prediction", "4, 9"]),
        ([0, 255, 1], [0, 1, 255], 255, ["prediction", "255", "ignore_label=255"]),
        ([0, 1, 1], [5, 1, 255], 255, ["truth", "5", "ignore_label=255"]),
    ],
)
def test_out_of_range_values(prediction, truth, ignore, fragments):
    with pytest.raises(ValueError) as info:
        confusion_matrix(np.asarray(prediction), np.asarray(truth), num_classes=3, ignore_label=ignore)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_many_offending_values_are_elided():
    with pytest.raises(ValueError, match=r"\.\.\. \(20 distinct values\)"):
        confusion_matrix(np.arange(3, 23), np.zeros(20, int), num_classes=3)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"prediction shape \(2, 3\).*truth shape \(3, 2\)"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), num_classes=2)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2.0}, "num_classes"),
        ({"num_classes": 2, "ignore_label": 1.5}, "ignore_label"),
    ],
)
def test_bad_options(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        confusion_matrix(np.zeros(3, int), np.zeros(3, int), **kwargs)


def test_float_labels_rejected():
    with pytest.raises(ValueError, match=r"prediction must hold integer class labels; got dtype float32"):
        confusion_matrix(np.zeros(3, np.float32), np.zeros(3, int), num_classes=2)


class LazyLabels:
    """Minimal lazy array: only ``shape``, ``dtype`` and slicing along axis 0; logs each read."""

    def __init__(self, array):
        self._array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.reads = []

    def __getitem__(self, key):
        assert isinstance(key, slice), f"read with {key!r}, expected a slice along axis 0"
        self.reads.append(key)
        return self._array[key]


def test_lazy_reads_are_blocks_of_whole_slices(monkeypatch):
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, (10, 8, 8)).astype(np.uint8)
    prediction = rng.integers(0, 3, truth.shape).astype(np.uint8)
    expected = confusion_matrix(prediction, truth, num_classes=3)
    monkeypatch.setattr(_confusion, "_BLOCK_PIXELS", 3 * 64)  # three z-slices per block
    lazy_truth, lazy_prediction = LazyLabels(truth), LazyLabels(prediction)
    np.testing.assert_array_equal(confusion_matrix(lazy_prediction, lazy_truth, num_classes=3), expected)
    assert [(s.start, s.stop) for s in lazy_truth.reads] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert lazy_prediction.reads == lazy_truth.reads


def test_zarr_input_matches_numpy(monkeypatch):
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 4, (6, 16, 16)).astype(np.uint8)
    truth[0, :2] = 255
    prediction = rng.integers(0, 4, truth.shape).astype(np.uint8)
    expected = confusion_matrix(prediction, truth, num_classes=4, ignore_label=255)
    monkeypatch.setattr(_confusion, "_BLOCK_PIXELS", 1)  # one z-slice per block
    z_truth = zarr.array(truth, chunks=(1, 16, 16))
    z_prediction = zarr.array(prediction, chunks=(2, 8, 8))
    result = confusion_matrix(z_prediction, z_truth, num_classes=4, ignore_label=255)
    np.testing.assert_array_equal(result, expected)

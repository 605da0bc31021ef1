"""EvaluationResult / evaluate: hand-worked scores, scikit-learn agreement, JSON, table, paths, real labels."""

import doctest
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from rich.console import Console
from sklearn import metrics as skm

import emseg.evaluation
from emseg.evaluation import EvaluationResult, _confusion, evaluate

nan = math.nan
EPFL_TEST_LABELS = Path(__file__).resolve().parents[3] / "shared" / "data" / "epfl-multiclass" / "test_labels.tif"

# Each case: prediction, truth, number of classes, ignore_label, then expected values worked out by
# hand: per class (iou, f1, precision, recall, truth_pixels, predicted_pixels), and
# (mean_iou, mean_iou_foreground, mean_f1, mean_f1_foreground, accuracy) with background = 0.
HAND_CASES = {
    # confusion [[5, 1], [1, 2]]
    "3x3 two classes": (
        [[0, 1, 1], [0, 1, 0], [0, 0, 0]],
        [[0, 0, 1], [0, 1, 1], [0, 0, 0]],
        2,
        None,
        [(5 / 7, 5 / 6, 5 / 6, 5 / 6, 6, 6), (2 / 4, 2 / 3, 2 / 3, 2 / 3, 3, 3)],
        ((5 / 7 + 1 / 2) / 2, 1 / 2, (5 / 6 + 2 / 3) / 2, 2 / 3, 7 / 9),
    ),
    # confusion [[2, 1, 0], [1, 2, 0], [0, 0, 0]]: class 2 is only "predicted" on an ignored
    # pixel, so it is empty, its scores are nan and it is left out of every mean
    "3 classes, ignored pixels, empty class": (
        [0, 1, 1, 1, 0, 2, 0, 0],
        [0, 0, 1, 1, 1, 255, 0, 255],
        3,
        255,
        [(1 / 2, 2 / 3, 2 / 3, 2 / 3, 3, 3), (1 / 2, 2 / 3, 2 / 3, 2 / 3, 3, 3), (nan, nan, nan, nan, 0, 0)],
        (1 / 2, 1 / 2, 2 / 3, 2 / 3, 4 / 6),
    ),
    # confusion [[2, 0, 0], [1, 0, 1], [0, 0, 0]]: class 1 never predicted (precision nan),
    # class 2 absent from the truth (recall nan); both have IoU 0, which counts in the means
    "precision and recall undefined": (
        [0, 0, 0, 2],
        [0, 0, 1, 1],
        3,
        None,
        [(2 / 3, 4 / 5, 2 / 3, 1, 2, 3), (0, 0, nan, 0, 2, 0), (0, 0, 0, nan, 0, 1)],
        (2 / 9, 0, 4 / 15, 0, 2 / 4),
    ),
    # perfect prediction of the background only: foreground class empty
    "only background present": (
        [[0, 0], [0, 0]],
        [[0, 0], [0, 0]],
        2,
        None,
        [(1, 1, 1, 1, 4, 4), (nan, nan, nan, nan, 0, 0)],
        (1, nan, 1, nan, 1),
    ),
    # nothing counted: every score and every mean undefined
    "everything ignored": (
        [[1, 0]],
        [[9, 9]],
        2,
        9,
        [(nan, nan, nan, nan, 0, 0), (nan, nan, nan, nan, 0, 0)],
        (nan, nan, nan, nan, nan),
    ),
}
METRICS = ("iou", "f1", "precision", "recall", "truth_pixels", "predicted_pixels")
MEANS = ("mean_iou", "mean_iou_foreground", "mean_f1", "mean_f1_foreground", "accuracy")


@pytest.mark.parametrize("case", HAND_CASES.values(), ids=HAND_CASES.keys())
def test_hand_worked(case):
    prediction, truth, k, ignore, per_class, means = case
    names = [f"c{i}" for i in range(k)]
    result = evaluate(np.array(prediction), np.array(truth), classes=names, ignore_label=ignore)
    assert result.classes == names
    for name, expected in zip(names, per_class):
        got = [result.per_class[name][key] for key in METRICS]
        np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=name)
    np.testing.assert_allclose([getattr(result, key) for key in MEANS], means, rtol=1e-12)
    assert result.background == 0
    assert result.ignore_label == ignore


def test_empty_class_is_nan_and_excluded_from_means():
    truth = np.array([0, 0, 1, 1, 3, 3])
    prediction = np.array([0, 1, 1, 1, 3, 0])
    with_empty = evaluate(prediction, truth, classes=["a", "b", "empty", "d"])
    without = evaluate(np.where(prediction == 3, 2, prediction), np.where(truth == 3, 2, truth), classes=["a", "b", "d"])
    assert math.isnan(with_empty.per_class["empty"]["iou"])
    assert math.isnan(with_empty.per_class["empty"]["f1"])
    for key in MEANS:
        assert getattr(with_empty, key) == pytest.approx(getattr(without, key)), key


def test_background_none_counts_every_class_as_foreground():
    result = evaluate(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 2]), background=None)
    assert result.mean_iou_foreground == result.mean_iou
    assert result.mean_f1_foreground == result.mean_f1


def test_background_index_other_than_zero():
    # hela-style labels: no 0, background is class 2 ("outside nucleus")
    result = evaluate(np.array([1, 2, 3, 3]), np.array([1, 2, 2, 3]), classes=["unused", "envelope", "outside", "nucleus"], background=2)
    assert math.isnan(result.per_class["unused"]["iou"])
    assert result.mean_iou_foreground == pytest.approx((1 + 1 / 2) / 2)  # envelope, nucleus


@pytest.mark.parametrize("k, ignore", [(2, None), (4, None), (6, 255), (5, 0)])
def test_matches_sklearn(k, ignore):
    rng = np.random.default_rng(10 + k)
    shape = (5, 12, 13)
    truth = rng.integers(0, k, shape).astype(np.uint8)
    truth[truth == k - 1] = 1  # class k-1 never in the truth: recall nan
    prediction = np.where(rng.random(shape) < 0.5, truth, rng.integers(0, k, shape)).astype(np.uint8)
    prediction[prediction == k - 2] = 0  # class k-2 never predicted: precision nan
    if k >= 5:  # class k-3 in neither: every score nan, left out of the means
        truth[truth == k - 3] = 0
        prediction[prediction == k - 3] = 0
    if ignore is not None:
        hidden = rng.random(shape) < 0.2
        truth[hidden] = ignore
    keep = np.ones(shape, bool) if ignore is None else truth != ignore
    y_true, y_pred = truth[keep], prediction[keep]
    if ignore is not None and ignore < k:
        # an ignore_label inside [0, k) hides that class from the truth completely
        assert ignore not in y_true
    labels = list(range(k))
    result = evaluate(prediction, truth, classes=[str(i) for i in labels], ignore_label=ignore)
    np.testing.assert_array_equal(result.confusion, skm.confusion_matrix(y_true, y_pred, labels=labels))
    expected = {
        # jaccard_score has no zero_division=nan: mark the classes absent from both by hand
        "iou": np.where(
            np.isin(labels, y_true) | np.isin(labels, y_pred),
            skm.jaccard_score(y_true, y_pred, labels=labels, average=None, zero_division=0),
            np.nan,
        ),
        "f1": skm.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan),
        "precision": skm.precision_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan),
        "recall": skm.recall_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan),
    }
    for key, values in expected.items():
        got = [result.per_class[str(i)][key] for i in labels]
        np.testing.assert_allclose(got, values, rtol=1e-12, err_msg=key)
    assert result.mean_iou == pytest.approx(np.nanmean(expected["iou"]))
    assert result.mean_f1 == pytest.approx(np.nanmean(expected["f1"]))
    assert result.mean_iou_foreground == pytest.approx(np.nanmean(expected["iou"][1:]))
    assert result.accuracy == pytest.approx(skm.accuracy_score(y_true, y_pred))
    if k > 2:
        assert any(math.isnan(result.per_class[str(i)]["precision"]) for i in labels)
    if k >= 5:
        assert math.isnan(result.per_class[str(k - 3)]["iou"])
        assert not math.isnan(result.mean_iou)


def test_default_class_names_from_largest_label():
    truth = np.array([[0, 3, 255], [1, 1, 255]], np.uint8)
    prediction = np.array([[0, 4, 200], [1, 1, 0]], np.uint8)  # 200 is on an ignored pixel
    result = evaluate(prediction, truth, ignore_label=255)
    assert result.classes == ["class_0", "class_1", "class_2", "class_3", "class_4"]
    assert result.confusion.sum() == 4
    assert math.isnan(result.per_class["class_2"]["iou"])
    assert result.per_class["class_4"]["predicted_pixels"] == 1


def test_default_class_names_keep_background_when_absent():
    result = evaluate(np.array([1, 2]), np.array([2, 2]))
    assert result.classes == ["class_0", "class_1", "class_2"]
    everything_ignored = evaluate(np.array([1, 1]), np.array([5, 5]), ignore_label=5)
    assert everything_ignored.classes == ["class_0"]
    assert math.isnan(everything_ignored.mean_iou)


def test_lazy_blocks_equal_whole_array(monkeypatch):
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, (8, 10, 10)).astype(np.uint8)
    truth[5:] = rng.integers(0, 6, (3, 10, 10))  # larger labels only show up in late blocks
    truth[2, :3] = 255
    prediction = rng.integers(0, 3, truth.shape).astype(np.uint8)
    whole = evaluate(prediction, truth, ignore_label=255)
    monkeypatch.setattr(_confusion, "_BLOCK_PIXELS", 1)

    class Lazy:
        def __init__(self, array):
            self.array, self.shape, self.rows = array, array.shape, []

        def __getitem__(self, key):
            self.rows.append(key.stop - key.start)
            return self.array[key]

    lazy_truth = Lazy(truth)
    blocked = evaluate(Lazy(prediction), lazy_truth, ignore_label=255)
    assert max(lazy_truth.rows) == 1 and len(lazy_truth.rows) == 8
    assert blocked.to_dict() == whole.to_dict()


def test_instance_labels_without_class_list_rejected():
    with pytest.raises(ValueError, match="found label value 5000.*instance labels"):
        evaluate(np.array([0, 5000]), np.array([0, 1]))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"classes": ["a", "b"]}, r"truth contains label values outside the valid range \[0, 2\)"),
        ({"classes": []}, "at least one class"),
        ({"classes": ["a", "a", "b"]}, "unique"),
        ({"classes": ["a", "b", "c"], "background": 3}, r"background must be a class index in \[0, 3\)"),
        ({"ignore_label": "255"}, "ignore_label"),
    ],
)
def test_evaluate_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        evaluate(np.array([0, 1, 2]), np.array([0, 1, 2]), **kwargs)


@pytest.mark.parametrize(
    "confusion, classes, fragment",
    [
        (np.zeros((2, 3), int), ["a", "b"], "square"),
        (np.zeros((2, 2)), ["a", "b"], "integer"),
        (np.array([[1, -1], [0, 1]]), ["a", "b"], "non-negative"),
        (np.zeros((2, 2), int), ["a"], "2 classes"),
    ],
)
def test_from_confusion_errors(confusion, classes, fragment):
    with pytest.raises(ValueError, match=fragment):
        EvaluationResult.from_confusion(confusion, classes=classes)


def test_json_round_trip(tmp_path):
    case = HAND_CASES["3 classes, ignored pixels, empty class"]
    result = evaluate(np.array(case[0]), np.array(case[1]), classes=["bg", "mito", "psd"], ignore_label=255)
    path = tmp_path / "scores.json"
    result.save_json(path)
    text = path.read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded == result.to_dict()
    assert loaded["per_class"]["psd"]["iou"] is None
    assert loaded["confusion"] == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    assert loaded["ignore_label"] == 255 and loaded["background"] == 0
    rebuilt = EvaluationResult.from_confusion(
        np.array(loaded["confusion"]),
        classes=loaded["classes"],
        background=loaded["background"],
        ignore_label=loaded["ignore_label"],
    )
    assert rebuilt.to_dict() == loaded
    for value in (loaded["mean_iou"], loaded["per_class"]["bg"]["truth_pixels"]):
        assert type(value) in (int, float)


def test_table_shows_scores_means_and_na():
    case = HAND_CASES["3 classes, ignored pixels, empty class"]
    result = evaluate(np.array(case[0]), np.array(case[1]), classes=["bg", "mito", "psd"], ignore_label=255)
    table = result.to_table()
    assert [column.header for column in table.columns] == ["class", "IoU", "F1", "precision", "recall", "truth px"]
    assert table.row_count == 5
    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None).print(table)
    text = buffer.getvalue()
    for fragment in ("bg", "mito", "psd", "n/a", "0.5000", "0.6667", "mean (all)", "mean (foreground)", "ignored"):
        assert fragment in text, fragment


def test_evaluate_tiff_paths(tmp_path):
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 3, (3, 16, 20)).astype(np.uint8)
    prediction = np.where(rng.random(truth.shape) < 0.7, truth, 0).astype(np.uint8)
    tifffile.imwrite(tmp_path / "truth.tif", truth, photometric="minisblack")
    tifffile.imwrite(tmp_path / "prediction.tif", prediction, photometric="minisblack")
    expected = evaluate(prediction, truth, classes=["bg", "membrane", "mito"]).to_dict()
    from_paths = evaluate(str(tmp_path / "prediction.tif"), tmp_path / "truth.tif", classes=["bg", "membrane", "mito"])
    assert from_paths.to_dict() == expected
    mixed = evaluate(prediction, tmp_path / "truth.tif", classes=["bg", "membrane", "mito"])
    assert mixed.to_dict() == expected


def test_real_epfl_labels_against_sklearn():
    truth = tifffile.imread(EPFL_TEST_LABELS)
    assert truth.shape == (5, 768, 1024)
    # deterministic perturbation: shift 2 px along x, then paint a 64x64 square as vesicles
    prediction = truth.copy()
    prediction[..., 2:] = truth[..., :-2]
    prediction[:, 300:364, 500:564] = 4
    names = ["background", "membranes", "mito interior", "mito boundary", "vesicles", "PSD", "axon"]
    result = evaluate(prediction, truth, classes=names)
    y_true, y_pred = truth.ravel(), prediction.ravel()
    labels = list(range(7))
    iou = skm.jaccard_score(y_true, y_pred, labels=labels, average=None)
    f1 = skm.f1_score(y_true, y_pred, labels=labels, average=None)
    np.testing.assert_allclose([result.per_class[n]["iou"] for n in names], iou, rtol=1e-12)
    np.testing.assert_allclose([result.per_class[n]["f1"] for n in names], f1, rtol=1e-12)
    assert result.mean_iou == pytest.approx(iou.mean())
    assert result.mean_iou_foreground == pytest.approx(iou[1:].mean())
    assert 0.5 < result.mean_iou < 0.95  # a 2 px shift hurts thin classes, but far from chance


def test_module_docstring_example_runs():
    failures, tried = doctest.testmod(emseg.evaluation, verbose=False)
    assert tried > 0 and failures == 0

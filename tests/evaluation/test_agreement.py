"""annotation_agreement: hand-worked agreement, symmetry, ignored pixels in either annotation."""

import math

import numpy as np
import pytest

from emseg.evaluation import EvaluationResult, _confusion, annotation_agreement, evaluate


def test_hand_worked_with_ignore_in_either():
    a = np.array([0, 0, 1, 1, 2, 255])
    b = np.array([0, 1, 1, 1, 255, 2])
    # the last two pixels are unlabelled in one annotation each, so only four are compared:
    # confusion [[1, 1, 0], [0, 2, 0], [0, 0, 0]]; IoU 1/2, 2/3, class 2 in neither -> nan
    result = annotation_agreement(a, b, classes=["bg", "mito", "er"], ignore_label=255)
    assert isinstance(result, EvaluationResult)
    np.testing.assert_array_equal(result.confusion, [[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    assert result.per_class["bg"]["iou"] == pytest.approx(1 / 2)
    assert result.per_class["mito"]["iou"] == pytest.approx(2 / 3)
    assert math.isnan(result.per_class["er"]["iou"])
    assert result.mean_iou == pytest.approx(7 / 12)
    assert result.mean_iou_foreground == pytest.approx(2 / 3)
    assert result.ignore_label == 255


def test_symmetric_and_same_as_evaluate_without_ignore(monkeypatch):
    monkeypatch.setattr(_confusion, "_BLOCK_PIXELS", 20)
    rng = np.random.default_rng(4)
    a = rng.integers(0, 3, (4, 6, 7))
    b = np.where(rng.random(a.shape) < 0.7, a, rng.integers(0, 3, a.shape))
    classes = ["x", "y", "z"]
    ab = annotation_agreement(a, b, classes=classes)
    ba = annotation_agreement(b, a, classes=classes)
    np.testing.assert_array_equal(ab.confusion, ba.confusion.T)
    for name in classes:
        assert ab.per_class[name]["iou"] == pytest.approx(ba.per_class[name]["iou"])
        assert ab.per_class[name]["precision"] == pytest.approx(ba.per_class[name]["recall"])
    assert ab.mean_iou == pytest.approx(ba.mean_iou)
    # with a as the truth and no ignored pixels this is evaluate(b, a)
    np.testing.assert_array_equal(ab.confusion, evaluate(b, a, classes=classes).confusion)


def test_rejects_labels_outside_classes():
    with pytest.raises(ValueError, match="outside the valid range"):
        annotation_agreement(np.array([0, 3]), np.array([0, 1]), classes=["a", "b"])
    with pytest.raises(ValueError, match="same shape"):
        annotation_agreement(np.zeros(3, int), np.zeros(4, int), classes=["a"])

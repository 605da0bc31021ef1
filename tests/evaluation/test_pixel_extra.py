"""pixel_scores, mean_iou, probability_auc, threshold_sweep: hand-worked values and scikit-learn agreement."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from emseg.evaluation import _confusion, confusion_matrix, mean_iou, pixel_scores, probability_auc, threshold_sweep

nan = math.nan
RATES = ("accuracy", "sensitivity", "specificity", "ppv", "npv")


@pytest.mark.parametrize(
    "confusion, expected",
    [
        # N = 9; class 0: TP 5, FN 1, FP 1, TN 2; class 1: TP 2, FN 1, FP 1, TN 5
        ([[5, 1], [1, 2]], [(7 / 9, 5 / 6, 2 / 3, 5 / 6, 2 / 3), (7 / 9, 2 / 3, 5 / 6, 2 / 3, 5 / 6)]),
        # class 2 in neither: undefined, every rate nan (not the trivial 1 a TN of 6 would give)
        (
            [[2, 1, 0], [1, 2, 0], [0, 0, 0]],
            [(4 / 6, 2 / 3, 2 / 3, 2 / 3, 2 / 3), (4 / 6, 2 / 3, 2 / 3, 2 / 3, 2 / 3), (nan, nan, nan, nan, nan)],
        ),
        # everything predicted as class 0: class 0 has TN = FN = 0 (NPV nan), class 1 is never predicted (PPV nan)
        ([[3, 0], [2, 0]], [(3 / 5, 1, 0, 3 / 5, nan), (3 / 5, 0, 1, nan, 3 / 5)]),
        # nothing counted: every rate undefined
        ([[0, 0], [0, 0]], [(nan,) * 5, (nan,) * 5]),
    ],
)
def test_pixel_scores_hand_worked(confusion, expected):
    names = [f"c{i}" for i in range(len(confusion))]
    scores = pixel_scores(np.array(confusion), names)
    assert list(scores) == names
    for name, want in zip(names, expected):
        np.testing.assert_allclose([scores[name][key] for key in RATES], want, rtol=1e-12, err_msg=name)
        assert scores[name]["tp"] + scores[name]["fp"] + scores[name]["fn"] + scores[name]["tn"] == np.sum(confusion)


def test_pixel_scores_match_sklearn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 300)
    prediction = np.where(rng.random(300) < 0.6, truth, rng.integers(0, 4, 300))
    scores = pixel_scores(confusion_matrix(prediction, truth, num_classes=4), ["a", "b", "c", "d"])
    for k, name in enumerate("abcd"):
        t, p = truth == k, prediction == k
        assert scores[name]["sensitivity"] == pytest.approx(skm.recall_score(t, p))
        assert scores[name]["ppv"] == pytest.approx(skm.precision_score(t, p))
        assert scores[name]["specificity"] == pytest.approx(skm.recall_score(~t, ~p))
        assert scores[name]["npv"] == pytest.approx(skm.precision_score(~t, ~p))
        assert scores[name]["accuracy"] == pytest.approx(skm.accuracy_score(t, p))


def test_mean_iou_subsets():
    # IoU: background 5/7, mito 2/(2+2+1) = 2/5, er 3/(3+0+1) = 3/4, empty nan
    confusion = np.array([[5, 1, 0, 0], [1, 2, 1, 0], [0, 0, 3, 0], [0, 0, 0, 0]])
    classes = ["background", "mito", "er", "empty"]
    assert mean_iou(confusion, classes) == pytest.approx((5 / 7 + 2 / 5 + 3 / 4) / 3)  # MIoU(all)
    assert mean_iou(confusion, classes, subset=["mito", "er", "empty"]) == pytest.approx((2 / 5 + 3 / 4) / 2)  # MIoU(org)
    assert mean_iou(confusion, classes, subset=["er"]) == pytest.approx(3 / 4)
    assert math.isnan(mean_iou(confusion, classes, subset=["empty"]))
    with pytest.raises(ValueError, match="nucleus"):
        mean_iou(confusion, classes, subset=["nucleus"])
    with pytest.raises(ValueError, match="4 classes"):
        mean_iou(confusion, classes[:3])


def test_auc_hand_worked():
    # class 1 scores: positives 0.9, 0.4; negatives 0.6, 0.1.
    # ROC AUC = ordered pairs won / all = 3 / 4; AP = 1/2 * 1 + 1/2 * 2/3 = 5/6 (same for class 0 by symmetry)
    p1 = np.array([0.9, 0.4, 0.6, 0.1])
    truth = np.array([1, 1, 0, 0])
    scores = probability_auc(np.stack([1 - p1, p1]), truth, classes=["bg", "fg"], bins=1000)
    for name in ("bg", "fg"):
        assert scores[name]["auc_roc"] == pytest.approx(3 / 4)
        assert scores[name]["average_precision"] == pytest.approx(5 / 6)
        assert (scores[name]["positives"], scores[name]["negatives"]) == (2, 2)


def _random_probabilities(rng, k, shape, *, levels=None):
    logits = rng.normal(size=(k,) + shape)
    truth = logits.argmax(axis=0)
    logits += rng.normal(scale=1.5, size=logits.shape)  # noisy but informative
    prob = np.exp(logits) / np.exp(logits).sum(axis=0)
    if levels is not None:  # put every score on a bin centre so no two different scores share a bin
        prob = (np.minimum(np.floor(prob * levels), levels - 1) + 0.5) / levels
    return prob, truth


@pytest.mark.parametrize("levels, bins, tol", [(100, 100, 1e-12), (None, 10000, 1e-3)])
def test_auc_matches_sklearn(monkeypatch, levels, bins, tol):
    monkeypatch.setattr(_confusion, "_BLOCK_PIXELS", 50)  # several blocks of whole slices
    rng = np.random.default_rng(1)
    prob, truth = _random_probabilities(rng, 4, (6, 10, 11), levels=levels)
    truth[truth == 3] = 0  # class 3 absent from the truth: both scores nan
    truth[rng.random(truth.shape) < 0.1] = 255
    scores = probability_auc(prob, truth, ignore_label=255, bins=bins)
    keep = truth != 255
    for k in range(3):
        y, s = truth[keep] == k, prob[k][keep]
        assert abs(scores[f"class_{k}"]["auc_roc"] - skm.roc_auc_score(y, s)) < tol
        assert abs(scores[f"class_{k}"]["average_precision"] - skm.average_precision_score(y, s)) < tol
    assert math.isnan(scores["class_3"]["auc_roc"]) and math.isnan(scores["class_3"]["average_precision"])
    assert scores["class_3"]["positives"] == 0


def test_auc_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        probability_auc(np.array([[0.5, 1.5]]), np.array([0, 0]))
    with pytest.raises(ValueError, match="shape"):
        probability_auc(np.zeros((2, 3)), np.zeros(4, int))


def test_threshold_sweep_hand_worked():
    prob = np.array([0.1, 0.4, 0.6, 0.9, 0.5, 0.2])
    truth = np.array([0, 1, 1, 1, 0, 255])
    # at 0 every counted pixel is foreground: TP 3, FP 2, FN 0
    # at 0.5: 0.6, 0.9 (foreground) and 0.5 (background) predicted: TP 2, FP 1, FN 1
    # at 1.0: nothing predicted: TP 0, FP 0, FN 3
    sweep = threshold_sweep(prob, truth, thresholds=[0.5, 0.0, 1.0], ignore_label=255)
    np.testing.assert_array_equal(sweep["threshold"], [0.5, 0.0, 1.0])
    np.testing.assert_array_equal(sweep["tp"], [2, 3, 0])
    np.testing.assert_array_equal(sweep["fp"], [1, 2, 0])
    np.testing.assert_array_equal(sweep["fn"], [1, 0, 3])
    np.testing.assert_allclose(sweep["iou"], [2 / 4, 3 / 5, 0])
    np.testing.assert_allclose(sweep["f1"], [4 / 6, 6 / 8, 0])
    np.testing.assert_allclose(sweep["precision"], [2 / 3, 3 / 5, nan])
    np.testing.assert_allclose(sweep["recall"], [2 / 3, 1, 0])


def test_threshold_sweep_matches_direct_computation(monkeypatch):
    monkeypatch.setattr(_confusion, "_BLOCK_PIXELS", 30)
    rng = np.random.default_rng(2)
    prob = rng.random((5, 8, 9))
    truth = (prob + rng.normal(scale=0.3, size=prob.shape) > 0.5).astype(np.uint8)
    sweep = threshold_sweep(prob, truth)
    assert len(sweep["threshold"]) == 11
    for i, t in enumerate(sweep["threshold"]):
        pred = prob >= t
        assert sweep["iou"][i] == pytest.approx(skm.jaccard_score(truth.ravel(), pred.ravel(), zero_division=0))
        assert sweep["f1"][i] == pytest.approx(skm.f1_score(truth.ravel(), pred.ravel(), zero_division=0))
        assert sweep["recall"][i] == pytest.approx(skm.recall_score(truth.ravel(), pred.ravel()))

"""Object-level scores: connected components, detection rates, AJI, panoptic quality, Hausdorff distance."""

import math

import numpy as np
import pytest
from scipy import ndimage

from emseg.evaluation import (
    aggregated_jaccard_index,
    connected_components,
    detection_scores,
    hausdorff_distance,
    object_scores,
    panoptic_quality,
)

nan = math.nan


def test_connected_components_connectivity_and_slices():
    diagonal = np.eye(3, dtype=bool)
    assert connected_components(diagonal)[1] == 3  # faces only
    assert connected_components(diagonal, connectivity=2)[1] == 1
    stack = np.zeros((2, 4, 4), bool)
    stack[0, 1:3, 1:3] = stack[1, 1:3, 1:3] = True
    labels, count = connected_components(stack)
    assert count == 1
    labels, count = connected_components(stack, per_slice=True)
    assert count == 2 and set(np.unique(labels[0])) == {0, 1} and set(np.unique(labels[1])) == {0, 2}
    with pytest.raises(ValueError, match="connectivity"):
        connected_components(stack, connectivity=4)


def test_detection_scores_hand_worked():
    # class 1 objects: A (10 px, 9 predicted: recall 0.9, detected), B (5 px, 4 predicted: recall
    # exactly 0.8, under-detected), C (10 px, none predicted: missed); class 2: D (2 px, detected);
    # class 3 has no object
    truth = np.array([[1] * 10 + [0] + [1] * 5 + [0] + [1] * 10 + [0, 2, 2]])
    prediction = np.array([[1] * 9 + [0] + [0] + [1] * 4 + [2] + [0] + [0] * 10 + [0, 2, 2]])
    scores = detection_scores(prediction, truth, classes=["bg", "a", "b", "c"])
    assert list(scores) == ["a", "b", "c"]
    assert scores["a"] == pytest.approx(
        {
            "objects": 3,
            "detected": 1,
            "under_detected": 1,
            "missed": 1,
            "detected_percent": 100 / 3,
            "under_detected_percent": 100 / 3,
            "missed_percent": 100 / 3,
        }
    )
    assert (scores["b"]["objects"], scores["b"]["detected"], scores["b"]["detected_percent"]) == (1, 1, 100.0)
    assert scores["c"]["objects"] == 0 and math.isnan(scores["c"]["missed_percent"])
    # with a lower bar B counts as detected
    assert detection_scores(prediction, truth, classes=["bg", "a", "b", "c"], detected_above=0.75)["a"]["detected"] == 2


# true objects G1 (4 px) and G2 (4 px); predicted S1 = G1 + 2 px, S2 = half of G2, S3 a false positive.
# G1-S1: intersection 4, union 6 (IoU 2/3); G2-S2: intersection 2, union 4 (IoU exactly 1/2).
# AJI: C = 4 + 2, U = 6 + 4 + |S3| 2 = 12 -> 1/2.
# PQ: only G1-S1 has IoU > 0.5: TP 1, FP 2 (S2, S3), FN 1 (G2); SQ 2/3, RQ 1 / (1 + 1 + 0.5) = 0.4, PQ 4/15
TRUE_INSTANCES = np.array([[1, 1, 1, 1, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0]])
PRED_INSTANCES = np.array([[1, 1, 1, 1, 1, 1, 0, 0, 2, 2, 0, 0, 3, 3]])


def test_aji_and_pq_hand_worked():
    assert aggregated_jaccard_index(PRED_INSTANCES, TRUE_INSTANCES) == pytest.approx(1 / 2)
    pq = panoptic_quality(PRED_INSTANCES, TRUE_INSTANCES)
    assert pq == pytest.approx({"pq": 4 / 15, "sq": 2 / 3, "rq": 0.4, "tp": 1, "fp": 2, "fn": 1})
    # instance ids need not be consecutive
    assert aggregated_jaccard_index(PRED_INSTANCES * 17, TRUE_INSTANCES * 5) == pytest.approx(1 / 2)
    # one prediction covering two true objects is paired with both and counted twice in U: 4 / 10
    assert aggregated_jaccard_index(np.array([1, 1, 1, 1, 1]), np.array([1, 1, 0, 2, 2])) == pytest.approx(0.4)


def test_aji_and_pq_edge_cases():
    empty = np.zeros((3, 3), int)
    assert math.isnan(aggregated_jaccard_index(empty, empty))
    assert all(math.isnan(panoptic_quality(empty, empty)[k]) for k in ("pq", "sq", "rq"))
    blob = np.zeros((3, 3), int)
    blob[1, 1] = 4
    assert aggregated_jaccard_index(blob, empty) == 0.0
    no_match = panoptic_quality(empty, blob)
    assert (no_match["pq"], no_match["rq"], no_match["fn"]) == (0.0, 0.0, 1) and math.isnan(no_match["sq"])
    assert panoptic_quality(blob, blob) == pytest.approx({"pq": 1, "sq": 1, "rq": 1, "tp": 1, "fp": 0, "fn": 0})


def test_object_scores_from_semantic_maps():
    truth = (TRUE_INSTANCES > 0).astype(np.uint8)
    prediction = (PRED_INSTANCES > 0).astype(np.uint8)
    scores = object_scores(prediction, truth, classes=["bg", "cell", "absent"])
    assert scores["cell"]["aji"] == pytest.approx(1 / 2)
    assert scores["cell"]["pq"] == pytest.approx(4 / 15)
    assert (scores["cell"]["true_objects"], scores["cell"]["predicted_objects"]) == (2, 3)
    assert math.isnan(scores["absent"]["aji"]) and math.isnan(scores["absent"]["pq"])
    # hide the false positive S3 under ignored truth: U = 10, one FP fewer
    truth[0, 11:] = 255
    ignored = object_scores(prediction, truth, classes=["bg", "cell"], ignore_label=255)
    assert ignored["cell"]["aji"] == pytest.approx(6 / 10)
    assert ignored["cell"]["fp"] == 1
    assert ignored["cell"]["pq"] == pytest.approx((2 / 3) / 2)


def test_hausdorff_hand_worked():
    # 4x4 squares, the prediction shifted 2 columns right. Distances from each of the 12 boundary
    # pixels of one to the nearest boundary pixel of the other: 0 x4, 1 x4, 2 x4 (both ways).
    truth = np.zeros((10, 10), np.uint8)
    prediction = np.zeros((10, 10), np.uint8)
    truth[2:6, 2:6] = 1
    prediction[2:6, 4:8] = 1
    classes = ["bg", "fg", "absent"]
    assert hausdorff_distance(prediction, truth, classes=classes)["fg"] == pytest.approx(2.0)
    assert hausdorff_distance(prediction, truth, classes=classes, percentile=50)["fg"] == pytest.approx(1.0)
    # x pixels 3 units wide: distances 0 x4, 1 x2 (along y), 3 x2, 6 x4 -> 95th percentile 6
    assert hausdorff_distance(prediction, truth, classes=classes, spacing=(1, 3))["fg"] == pytest.approx(6.0)
    assert math.isnan(hausdorff_distance(prediction, truth, classes=classes)["absent"])
    assert math.isnan(hausdorff_distance(np.zeros_like(truth), truth, classes=classes)["fg"])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice
def test_hausdorff_matches_monai():
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(3)
    truth = np.zeros((6, 14, 15), np.int64)
    truth[1:5, 2:9, 3:10] = 1
    truth[2:6, 8:13, 9:14] = 2
    prediction = ndimage.median_filter(np.where(rng.random(truth.shape) < 0.15, rng.integers(0, 3, truth.shape), truth), 3)
    spacing = (2.0, 1.0, 0.5)
    ours = hausdorff_distance(prediction, truth, classes=["bg", "a", "b"], spacing=spacing)
    one_hot = lambda x: torch.from_numpy(np.eye(3)[x].transpose(3, 0, 1, 2)[None])
    theirs = compute_hausdorff_distance(one_hot(prediction), one_hot(truth), include_background=False, percentile=95, spacing=spacing)
    assert min(ours["a"], ours["b"]) > 0
    np.testing.assert_allclose([ours["a"], ours["b"]], theirs.numpy()[0], rtol=1e-5)

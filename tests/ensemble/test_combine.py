"""Combining probabilities: mean, vote with ties, the simplex grid and the weight search, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emseg.ensemble import (
    combine_probabilities,
    grid_search_weights,
    majority_vote,
    mean_iou_from_confusion,
    score_weights,
    simplex_grid,
    vote_probabilities,
    vote_tie_epsilon,
)


def test_simplex_grid_sizes_and_rows():
    grid = simplex_grid(3, step=0.1)
    assert grid.shape == (66, 3)  # C(12, 2)
    np.testing.assert_allclose(grid.sum(1), 1.0)
    assert (grid >= 0).all()
    assert len({tuple(np.round(r, 6)) for r in grid}) == 66
    assert len(simplex_grid(2, step=0.1)) == 11
    assert len(simplex_grid(4, step=0.05)) == math.comb(23, 3)
    np.testing.assert_allclose(simplex_grid(2, step=0.5), [[0, 1], [0.5, 0.5], [1, 0]])
    assert simplex_grid(1, step=0.1).tolist() == [[1.0]]
    with pytest.raises(ValueError, match="does not divide 1"):
        simplex_grid(3, step=0.3)


def test_mean_is_the_manual_average_and_weighted_normalises():
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(3), size=(4, 5)).transpose(2, 0, 1).astype(np.float32) for _ in range(3)]
    np.testing.assert_allclose(combine_probabilities(probs, method="mean"), (probs[0] + probs[1] + probs[2]) / 3,
                               rtol=1e-6)
    np.testing.assert_allclose(combine_probabilities(probs, method="weighted", weights=[2, 0, 2]),
                               0.5 * probs[0] + 0.5 * probs[2], rtol=1e-6)
    with pytest.raises(ValueError, match="one per member"):
        combine_probabilities(probs, method="weighted", weights=[1, 1])
    with pytest.raises(ValueError, match="method"):
        combine_probabilities(probs, method="median")


def _onehotish(labels, k=3, high=0.6):
    """Probabilities with ``high`` on the given class and the rest split evenly, shape (K, N)."""
    labels = np.asarray(labels)
    p = np.full((k, labels.size), (1 - high) / (k - 1), np.float32)
    p[labels, np.arange(labels.size)] = high
    return p


def test_vote_majority_and_ties_broken_by_mean_probability():
    # 4 voxels, 3 members, 3 classes.
    a = _onehotish([0, 1, 2, 0])
    b = _onehotish([0, 2, 1, 1])
    c = _onehotish([1, 2, 0, 2])
    a[:, 2] = [0.2, 0.2, 0.6]       # voxel 2: votes 2, 1, 0 -> three-way tie
    b[:, 2] = [0.0, 0.9, 0.1]       # mean probs: class0 (0.2+0.0+0.6)/3, class1 (0.2+0.9+0.2)/3, class2 (0.6+0.1+0.2)/3
    c[:, 2] = [0.6, 0.2, 0.2]
    labels, fractions = majority_vote([a, b, c])
    # voxel 0: 0,0,1 -> 0; voxel 1: 1,2,2 -> 2; voxel 2: tie, class 1 has the highest mean (1.3/3); voxel 3: 0,1,2 tie
    # with equal mean probabilities 0.6+0.2+0.2 for each class -> lowest index 0.
    assert labels.tolist() == [0, 2, 1, 0]
    np.testing.assert_allclose(fractions[:, 0], [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(fractions[:, 2], [1 / 3, 1 / 3, 1 / 3])
    combined = vote_probabilities([a, b, c])
    np.testing.assert_allclose(combined.sum(0), 1.0, rtol=1e-6)
    assert combined.argmax(0).tolist() == labels.tolist()
    eps = vote_tie_epsilon(3)
    np.testing.assert_allclose(combined, (1 - eps) * fractions + eps * (a + b + c) / 3, rtol=1e-6)
    assert np.abs(combined - fractions).max() <= eps


def test_vote_one_confident_member_cannot_outvote_two():
    a = np.array([[0.99], [0.01]], np.float32)   # class 0, very sure
    b = np.array([[0.45], [0.55]], np.float32)   # class 1, barely
    labels, _ = majority_vote([a, b, b])
    assert labels.tolist() == [1]
    assert combine_probabilities([a, b, b], method="mean").argmax(0).tolist() == [0]  # the mean disagrees


def test_mean_iou_matches_evaluation_result():
    from emseg.evaluation import EvaluationResult

    confusion = np.array([[50, 3, 0, 0], [4, 20, 1, 0], [0, 2, 7, 0], [0, 0, 0, 0]])
    result = EvaluationResult.from_confusion(confusion, classes=list("abcd"), background=0)
    assert mean_iou_from_confusion(confusion) == pytest.approx(result.mean_iou)
    assert mean_iou_from_confusion(confusion, background=0, foreground=True) == pytest.approx(result.mean_iou_foreground)
    assert mean_iou_from_confusion(confusion) == pytest.approx((50 / 57 + 20 / 30 + 7 / 10) / 3)  # class d absent


def test_grid_search_finds_the_hand_worked_weights():
    # Truth: class 0 everywhere. Member A says class 0 with p=0.6, member B says class 1 with p=1.
    # p0 = 0.6 wA > 0.5 iff wA > 5/6: on the 0.1 grid wA in {0.9, 1.0} both score IoU 1 (class 1 absent);
    # the tie goes to the weights closer to equal, (0.9, 0.1).
    n = 10
    a = np.tile([[0.6], [0.4]], (1, n)).astype(np.float32)
    b = np.tile([[0.0], [1.0]], (1, n)).astype(np.float32)
    truth = np.zeros(n, np.int64)
    search = grid_search_weights(np.stack([a, b]), truth, step=0.1)
    np.testing.assert_allclose(search.weights, [0.9, 0.1])
    assert search.score == 1.0 and search.ties == 2
    assert len(search.grid) == 11
    # every weight vector with wA <= 0.8 predicts class 1 everywhere: IoU 0 for both classes
    assert (search.scores[np.round(search.grid[:, 0], 6) <= 0.8] == 0).all()


def test_grid_search_three_members_each_right_on_part_of_the_voxels():
    # 3 classes, 6 voxels. A is sure (0.9) and right on voxels 0-3, unsure (0.5) and wrong on 4-5; B the other way
    # round; C is very sure (0.98, others 0.01) and always wrong. Hand-worked, with weights (a, b, c):
    #   voxels 0-3: truth beats B's class iff 0.85a > 0.25b, and beats C's iff 0.85a > 0.97c;
    #   voxels 4-5: truth beats A's class iff 0.85b > 0.25a, and beats C's iff 0.85b > 0.97c.
    # No point of the 0.1 grid lies on one of these lines (97c = 85a has no solution in tenths <= 1), so no score
    # depends on float rounding. Perfect points: c < 0.876 min(a, b) and a/3.4 < b < 3.4a. Of those, the nearest
    # to equal weights (the tie rule) is (0.4, 0.4, 0.2): (0.4, 0.3, 0.3) and its permutations are nearer but put
    # 0.3 > 0.876 * 0.3 on C. An earlier version used C = 0.9, whose lines c = a and c = b pass through grid
    # points: there the winner was decided by rounding, and (0.4, 0.3, 0.3) won on some CPUs.
    truth = np.array([0, 0, 1, 1, 2, 2])
    a = np.concatenate([_onehotish([0, 0, 1, 1], high=0.9), _onehotish([0, 0], high=0.5)], axis=1)
    b = np.concatenate([_onehotish([1, 1, 0, 0], high=0.5), _onehotish([2, 2], high=0.9)], axis=1)
    c = _onehotish([2, 2, 2, 2, 1, 1], high=0.98)
    cache = np.stack([a, b, c])
    assert score_weights(cache, truth, [0.5, 0.5, 0.0])[0] == 1.0
    search = grid_search_weights(cache, truth, step=0.1)
    assert search.score == 1.0
    np.testing.assert_allclose(search.weights, [0.4, 0.4, 0.2], atol=1e-9)
    for near in ([0.4, 0.3, 0.3], [0.3, 0.4, 0.3], [0.3, 0.3, 0.4]):  # nearer to equal weights, not perfect
        assert score_weights(cache, truth, near)[0] < 1.0
    # brute force over the same grid agrees
    scores = [score_weights(cache, truth, w)[0] for w in simplex_grid(3, step=0.1)]
    np.testing.assert_allclose(search.scores, scores)
    assert search.scores.max() == 1.0 and search.ties == int((search.scores == 1.0).sum())
    # single members are grid vertices: the search can never be worse than the best member
    best_member = max(score_weights(cache, truth, np.eye(3)[m])[0] for m in range(3))
    assert search.score >= best_member and best_member < 1.0
    # foreground scoring leaves class 0 out
    fg = grid_search_weights(cache, truth, step=0.1, background=0, foreground=True)
    assert fg.metric == "mean_iou_foreground" and fg.score == 1.0

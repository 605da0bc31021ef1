"""rand_info_scores / membrane_scores: hand-worked ISBI 2012 scores and scikit-image agreement."""

import math

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from emseg.evaluation import membrane_scores, membrane_segments, rand_info_scores


def _entropy(p):
    p = np.asarray(p, dtype=float)
    return float(-(p * np.log(p)).sum())


def test_rand_info_hand_worked():
    # the 0 pixel of the truth is left out whatever was predicted there.
    # counted: true segments {1: 4 px, 2: 2 px}; predicted {1: 2, 2: 2, 3: 2}: cell 1 split in two.
    # joint counts 2, 2, 2 -> sum n_ij^2 = 12, sum t_j^2 = 16 + 4 = 20, sum s_i^2 = 12
    true = np.array([1, 1, 1, 1, 2, 2, 0])
    pred = np.array([1, 1, 2, 2, 3, 3, 3])
    scores = rand_info_scores(pred, true)
    assert scores["v_rand_split"] == pytest.approx(12 / 20)
    assert scores["v_rand_merge"] == pytest.approx(1.0)
    assert scores["v_rand"] == pytest.approx(24 / 32)
    # the truth is a function of the prediction, so I(S; T) = H(T); H(S) = ln 3
    h_true = _entropy([4 / 6, 2 / 6])
    assert scores["v_info_split"] == pytest.approx(h_true / math.log(3))
    assert scores["v_info_merge"] == pytest.approx(1.0)
    assert scores["v_info"] == pytest.approx(2 * h_true / (math.log(3) + h_true))
    # counting distinct pairs (scikit-image): sum n_ij(n_ij - 1) = 6, true 12 + 2 = 14, pred 6
    pairs = rand_info_scores(pred, true, pairs=True)
    assert (pairs["v_rand_split"], pairs["v_rand_merge"], pairs["v_rand"]) == pytest.approx((6 / 14, 1, 12 / 20))
    are, precision, recall = adapted_rand_error(true, pred)
    assert (1 - are, precision, recall) == pytest.approx((0.6, 3 / 7, 1.0))  # precision = split score
    # a merge is the mirror image: swap roles (truth 0 pixel kept out by giving it 0 in both)
    merged = rand_info_scores(np.array([1, 1, 1, 1, 1, 1, 0]), np.array([1, 1, 2, 2, 3, 3, 0]))
    assert (merged["v_rand_split"], merged["v_rand_merge"]) == pytest.approx((1.0, 12 / 36))


def test_predicted_zero_singletons_or_segment():
    # one true cell of 4 px; the prediction marks 2 of its pixels as boundary (0)
    true = np.array([1, 1, 1, 1])
    pred = np.array([1, 1, 0, 0])
    # singletons: segments of 2, 1, 1 px -> sum n^2 = 6 over sum t^2 = 16
    assert rand_info_scores(pred, true)["v_rand_split"] == pytest.approx(6 / 16)
    # one segment "0" of 2 px -> 8 / 16
    assert rand_info_scores(pred, true, pred_zero="segment")["v_rand_split"] == pytest.approx(8 / 16)
    with pytest.raises(ValueError, match="pred_zero"):
        rand_info_scores(pred, true, pred_zero="drop")


def test_degenerate_cases():
    assert all(math.isnan(v) for v in rand_info_scores(np.ones((3, 3), int), np.zeros((3, 3), int)).values())
    perfect = rand_info_scores(np.full((3, 3), 5), np.full((3, 3), 2))
    assert perfect == pytest.approx(dict.fromkeys(perfect, 1.0))
    # relabelling either image changes nothing
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, (6, 6))
    pred = rng.integers(1, 5, (6, 6))
    assert rand_info_scores(pred * 7 + 3, true * 11) == pytest.approx(rand_info_scores(pred, true))


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_skimage(seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 5, (2, 9, 10))  # 0 = not counted
    pred = np.where(rng.random(true.shape) < 0.7, true, rng.integers(0, 6, true.shape)) + 2 * (true == 4)
    scores = rand_info_scores(pred, true, pred_zero="segment", pairs=True)
    are, precision, recall = adapted_rand_error(true, pred)
    assert scores["v_rand"] == pytest.approx(1 - are)
    assert scores["v_rand_split"] == pytest.approx(precision)
    assert scores["v_rand_merge"] == pytest.approx(recall)
    # skimage gives the conditional entropies H(image1 | image0), H(image0 | image1) in bits,
    # on the pixels where image0 (the truth) is not 0
    h_pred_given_true, h_true_given_pred = variation_of_information(true, pred, ignore_labels=[0]) * math.log(2)
    fg = true != 0
    h_pred = _entropy(np.unique(pred[fg], return_counts=True)[1] / fg.sum())
    h_true = _entropy(np.unique(true[fg], return_counts=True)[1] / fg.sum())
    assert scores["v_info_split"] == pytest.approx((h_pred - h_pred_given_true) / h_pred)
    assert scores["v_info_merge"] == pytest.approx((h_true - h_true_given_pred) / h_true)
    # the V_Info scores do not depend on the pair convention
    squares = rand_info_scores(pred, true, pred_zero="segment")
    assert squares["v_info"] == pytest.approx(scores["v_info"])


def _cross(thickness):
    """7x7 truth-style map: a vertical membrane through column 3 (widened to ``thickness``)."""
    mask = np.zeros((7, 7), bool)
    half = thickness // 2
    mask[:, 3 - half : 4 + half] = True
    return mask


def test_membrane_scores_hand_worked():
    true = _cross(1)  # cells: columns 0-2 (21 px) and 4-6 (21 px)
    pred = true.copy()
    pred[3, :3] = True  # the left cell is cut into two 9-px cells by a 3-px line
    # thinning may drop the T-junction pixel (3, 3), but the truth is membrane there, so it is not counted
    assert membrane_segments(pred).max() == 3
    assert membrane_scores(pred, true) == pytest.approx(membrane_scores(pred, true, thin=False))
    # predicted segments inside the truth's 42 foreground px: 9, 9, 21 and three 1-px singletons
    # joint = predicted segments (each inside one true cell): sum n^2 = 81 + 81 + 441 + 3 = 606
    scores = membrane_scores(pred, true)
    assert scores["v_rand_split"] == pytest.approx(606 / 882)
    assert scores["v_rand_merge"] == pytest.approx(1.0)
    assert scores["v_rand"] == pytest.approx(1212 / 1488)
    h_pred = _entropy([9 / 42, 9 / 42, 21 / 42] + [1 / 42] * 3)
    assert scores["v_info_split"] == pytest.approx(math.log(2) / h_pred)
    assert scores["v_info_merge"] == pytest.approx(1.0)
    # predicting no membrane at all merges the two true cells
    merged = membrane_scores(np.zeros((7, 7), bool), true)
    assert merged["v_rand_merge"] == pytest.approx(882 / 42**2)
    assert merged["v_info_merge"] == pytest.approx(0.0)


def test_thinning_makes_membrane_width_irrelevant():
    thick = _cross(3)
    segments = membrane_segments(thick)
    assert segments.max() == 2
    assert (segments == 0).sum() <= 8  # a 1-px line (give or take a pixel where it meets the border)
    thinned = membrane_scores(thick, _cross(1))
    unthinned = membrane_scores(thick, _cross(1), thin=False)
    # unthinned, the two extra membrane columns become 14 one-pixel segments inside the true cells:
    # cells of 14 px (columns 0-1 and 5-6): sum n^2 = 2 * 14^2 + 14 = 406 against sum t^2 = 2 * 21^2 = 882
    assert unthinned["v_rand_split"] == pytest.approx(406 / 882)
    assert thinned["v_rand_split"] > 0.95 > unthinned["v_rand_split"]
    assert thinned["v_rand_merge"] == unthinned["v_rand_merge"] == 1.0


def test_membrane_stack_is_labelled_per_slice():
    stack = np.stack([_cross(1), _cross(1)])
    labels = membrane_segments(stack)
    assert labels.max() == 4  # two cells per slice, ids unique over the stack
    perfect = membrane_scores(stack, stack)
    assert perfect == pytest.approx(dict.fromkeys(perfect, 1.0))
    with pytest.raises(ValueError, match="0/1"):
        membrane_scores(stack.astype(int) * 2, stack)

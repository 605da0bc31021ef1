"""Guay et al. and Ronneberger et al. weight maps against hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from emseg.data import IGNORE_INDEX
from emseg.data._weights import class_balance_weights, guay_weight_map, unet_border_weight_map


# ---------------------------------------------------------------- Guay: constant + class balance

def test_guay_class_balance_by_hand():
    labels = np.array([[[0, 0, 0, 1],
                        [0, 1, 255, 2]]])
    # labelled counts: N0 = 4, N1 = 2, N2 = 1 (the 255 pixel is ignored)
    # 1/N = (1/4, 1/2, 1) -> already max 1 -> W_cb = (0.25, 0.5, 1.0); W = w0 + W_cb with w0 = 1
    expected = np.array([[[1.25, 1.25, 1.25, 1.5],
                          [1.25, 1.5, 0.0, 2.0]]], dtype=np.float32)
    w = guay_weight_map(labels, num_classes=3, w0=1.0, ignore_label=255)
    assert w.dtype == np.float32 and w.shape == labels.shape
    np.testing.assert_allclose(w, expected, atol=1e-6)
    # IGNORE_INDEX is always unlabelled
    np.testing.assert_allclose(guay_weight_map(np.where(labels == 255, IGNORE_INDEX, labels), num_classes=3), expected,
                               atol=1e-6)
    # without class balancing: w0 on labelled pixels, 0 on the ignored one
    w = guay_weight_map(labels, num_classes=3, w0=2.0, class_balance=False, ignore_label=255)
    np.testing.assert_allclose(w, np.where(labels == 255, 0.0, 2.0), atol=1e-6)
    # the per-class weights themselves; an absent class gets 0
    np.testing.assert_allclose(class_balance_weights(labels, num_classes=4, ignore_label=255), [0.25, 0.5, 1.0, 0.0])


def test_precomputed_balance_weights_for_slice_by_slice_use():
    # training slices may differ in size, so the trainer computes the class balance once over all of them
    slices = [np.array([[0, 0, 0, 1]]), np.array([[0, 1, 2], [0, 0, 2]])]
    # counts over both: N0 = 3 + 3 = 6, N1 = 1 + 1 = 2, N2 = 2 -> w = (2/6, 1, 1)
    cb = class_balance_weights(np.concatenate([s.ravel() for s in slices]), num_classes=3)
    np.testing.assert_allclose(cb, [1 / 3, 1.0, 1.0])
    w = guay_weight_map(slices[0], num_classes=3, w0=1.0, balance_weights=cb)
    np.testing.assert_allclose(w, [[4 / 3, 4 / 3, 4 / 3, 2.0]], atol=1e-6)
    w = unet_border_weight_map(slices[1], balance_weights=cb)
    np.testing.assert_allclose(w, [[1 / 3, 1.0, 1.0], [1 / 3, 1 / 3, 1.0]], atol=1e-6)


# ---------------------------------------------------------------- Guay: edge-preserving term

def _edge_volume() -> np.ndarray:
    lab = np.ones((2, 15, 15), dtype=np.int16)  # class 1 = target
    lab[0, :, :5] = 2  # slice 0: source class 2 fills columns 0..4
    lab[0, :3, 5:12] = 0  # class 0 next to the source: neither source nor target
    return lab  # slice 1 is all target and holds no source


def test_guay_edge_term_only_on_target_pixels_near_source_and_decays():
    lab = _edge_volume()
    term = {"source": [2], "target": [1], "alpha": 5.0, "c": 0.05, "sigma": 1.5}
    w = guay_weight_map(lab, num_classes=3, w0=0.0, class_balance=False, edge_terms=[term])  # W = edge term only
    assert np.all(w[0][lab[0] == 2] == 0)  # source pixels
    assert np.all(w[0][lab[0] == 0] == 0)  # pixels of another class, even right next to the source
    assert np.all(w[1] == 0)  # diffusion is per slice: nothing leaks into slice 1
    assert w.max() == pytest.approx(5.0)  # rescaled so the term's maximum is alpha
    row = w[0, 10]
    assert row[5] == pytest.approx(5.0)  # the target pixel touching the source
    nonzero = row[5:][row[5:] > 0]
    assert len(nonzero) >= 2 and np.all(np.diff(nonzero) < 0)  # decays with distance
    assert row[11:].max() == 0  # 7+ pixels away: diffused value below c -> 0

    # By construction D(j) along a row is the 1-D Gaussian diffusion of the step "columns 0..4 are source";
    # E = alpha * (D - c) / (D(5) - c) where D > c (column 5 holds the maximum).
    d = ndimage.gaussian_filter1d((np.arange(15) < 5).astype(float), 1.5, mode="nearest")
    expected = np.where(np.arange(15) >= 5, 5.0 * np.maximum(d - 0.05, 0) / (d[5] - 0.05), 0.0)
    np.testing.assert_allclose(row, expected, atol=1e-5)


def test_guay_terms_add_up():
    lab = _edge_volume()
    term = {"source": 2, "target": 1, "alpha": 3.0, "c": 0.1, "sigma": 2.0}
    base = guay_weight_map(lab, num_classes=3, w0=1.0)
    edge = guay_weight_map(lab, num_classes=3, w0=0.0, class_balance=False, edge_terms=[term])
    full = guay_weight_map(lab, num_classes=3, w0=1.0, edge_terms=[term])
    np.testing.assert_allclose(full, base + edge, atol=1e-6)
    # a 2-D slice gives the 2-D result of that slice
    np.testing.assert_allclose(guay_weight_map(lab[0], num_classes=3, w0=1.0, edge_terms=[term])[:, :],
                               guay_weight_map(lab[:1], num_classes=3, w0=1.0, edge_terms=[term])[0], atol=1e-6)


def test_guay_ignored_pixels_are_zero_and_not_sources():
    lab = _edge_volume()
    lab[0, 7, 3] = 255  # an unlabelled pixel inside the source region
    term = {"source": [2], "target": [1], "alpha": 5.0, "c": 0.05, "sigma": 1.5}
    w = guay_weight_map(lab, num_classes=3, edge_terms=[term], ignore_label=255)
    assert w[0, 7, 3] == 0
    assert np.all(w[lab != 255] > 0)


def test_guay_input_errors_name_the_problem():
    lab = _edge_volume()
    with pytest.raises(ValueError, match="Did you mean 'sigma'"):
        guay_weight_map(lab, num_classes=3, edge_terms=[{"source": [2], "target": [1], "sigm": 2}])
    with pytest.raises(ValueError, match=r"source must list class indices in \[0, 3\)"):
        guay_weight_map(lab, num_classes=3, edge_terms=[{"source": [5], "target": [1]}])
    with pytest.raises(ValueError, match="num_classes is 2"):
        guay_weight_map(lab, num_classes=2)
    with pytest.raises(ValueError, match="c must be in"):
        guay_weight_map(lab, num_classes=3, edge_terms=[{"source": [2], "target": [1], "c": 1.0}])


# ---------------------------------------------------------------- Ronneberger et al. 2015

def _two_boxes() -> np.ndarray:
    lab = np.zeros((1, 12, 40), dtype=np.uint8)
    lab[0, 3:9, 5:15] = 1  # object A: rows 3..8, columns 5..14
    lab[0, 3:9, 17:27] = 1  # object B: rows 3..8, columns 17..26 -> a 2-pixel gap (columns 15, 16)
    return lab


def test_unet_weight_high_in_gap_and_wc_far_away():
    lab = _two_boxes()
    w = unet_border_weight_map(lab, foreground=1, w0=10.0, sigma=5.0)
    # counts: foreground 2 * 6 * 10 = 120, background 480 - 120 = 360 -> w_c = (120/360, 1) = (1/3, 1)
    # gap pixel (5, 15): d1 = 1 (to column 14), d2 = 2 (to column 17):
    #   1/3 + 10 * exp(-(1 + 2)^2 / (2 * 5^2)) = 0.333333 + 10 * exp(-0.18) = 0.333333 + 8.352702 = 8.686035
    assert w[0, 5, 15] == pytest.approx(8.686035, abs=1e-4)
    assert w[0, 5, 16] == pytest.approx(8.686035, abs=1e-4)
    # far corner (11, 39): d1 = |(11,39)-(8,26)| = 13.34, d2 = |(11,39)-(8,14)| = 25.18 -> exp(-29.6) ~ 0
    assert w[0, 11, 39] == pytest.approx(1 / 3, abs=1e-6)
    assert w[0, 5, 8] == pytest.approx(1.0)  # inside an object: w_c only
    # the gap is the heaviest place
    assert np.unravel_index(np.argmax(w), w.shape)[2] in (15, 16)
    # without class balancing w_c = 1
    w1 = unet_border_weight_map(lab, foreground=1, w0=10.0, sigma=5.0, class_balance=False)
    assert w1[0, 5, 15] == pytest.approx(1 + 8.352702, abs=1e-4)
    assert w1[0, 11, 39] == pytest.approx(1.0, abs=1e-6)


def test_unet_single_object_has_no_border_term():
    lab = _two_boxes()
    lab[0, :, 17:] = 0  # remove object B
    w = unet_border_weight_map(lab, class_balance=False)
    assert np.all(w == 1.0)


def test_unet_ignored_pixels_are_zero():
    lab = _two_boxes().astype(np.int16)
    lab[0, 5, 15] = 255
    lab[0, 0, 0] = IGNORE_INDEX
    w = unet_border_weight_map(lab, ignore_label=255)
    assert w[0, 5, 15] == 0 and w[0, 0, 0] == 0
    assert np.all(w[(lab != 255) & (lab != IGNORE_INDEX)] > 0)


def _brute_force_border(lab2d: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    instances, n = ndimage.label(lab2d == 1)
    d = np.sort(np.stack([ndimage.distance_transform_edt(instances != k) for k in range(1, n + 1)]), axis=0)
    border = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return np.where(instances == 0, border, 0.0)


def test_unet_matches_brute_force_on_random_blobs():
    rng = np.random.default_rng(0)
    blobs = ndimage.gaussian_filter(rng.normal(size=(2, 48, 48)), (0, 2, 2)) > 0.15
    lab = blobs.astype(np.uint8)
    w = unet_border_weight_map(lab, w0=10.0, sigma=3.0, class_balance=False)
    for z in range(2):
        assert ndimage.label(lab[z] == 1)[1] >= 3
        np.testing.assert_allclose(w[z], 1.0 + _brute_force_border(lab[z], 10.0, 3.0), atol=1e-4)

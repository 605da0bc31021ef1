"""Patch sampling modes: Meyer's labelled-window ratio and Guay's regular grid."""

from __future__ import annotations

import numpy as np
import pytest

from emseg.data import IGNORE_INDEX, PatchSampler


def _one_slice(fg_box=(slice(4, 6), slice(4, 6)), shape=(64, 64)):
    lab = np.zeros(shape, np.int16)
    lab[fg_box] = 1
    return [np.zeros((1, *shape), np.float32)], [lab]


def test_labelled_fraction_statistics():
    # 64x64 slice, 16x16 windows, foreground = the 2x2 block at (4..5, 4..5).
    # Uniform window corners: 49 x 49; a window contains foreground iff y0 <= 5 and x0 <= 5
    # (y0 + 15 >= 4 always holds) -> p_uniform = (6/49)^2 = 0.014994.
    # Expected share of windows with foreground: 0.8 + 0.2 * 0.014994 = 0.802999.
    images, labels = _one_slice()
    sampler = PatchSampler(images, labels, patch_size=(16, 16), num_classes=2, rng=np.random.default_rng(0),
                           mode="labelled", labelled_fraction=0.8)
    n = 20000
    _, y = sampler.sample(n)
    share = (y == 1).any(axis=(1, 2)).mean()
    expected = 0.8 + 0.2 * (6 / 49) ** 2
    sd = np.sqrt(expected * (1 - expected) / n)  # ~0.0028
    assert abs(share - expected) < 4 * sd


def test_labelled_windows_are_spread_over_all_windows_containing_the_pixel():
    images, labels = _one_slice(fg_box=(slice(30, 31), slice(30, 31)))
    sampler = PatchSampler(images, labels, patch_size=(16, 16), num_classes=2, rng=np.random.default_rng(1),
                           mode="labelled", labelled_fraction=1.0)
    corners = np.array([(y0, x0) for _, y0, x0 in sampler.windows(4000)])
    # windows containing (30, 30): y0, x0 in 15..30 (16 values each), uniform
    assert corners.min() == 15 and corners.max() == 30
    counts = np.bincount(corners[:, 0] - 15, minlength=16)
    assert counts.min() > 4000 / 16 * 0.7


def test_grid_positions_exact_and_shuffled_each_pass():
    images, labels = _one_slice(shape=(40, 50))
    images.append(np.zeros((1, 20, 20), np.float32))
    labels.append(np.zeros((20, 20), np.int16))
    sampler = PatchSampler(images, labels, patch_size=(16, 16), num_classes=2, rng=np.random.default_rng(0),
                           mode="grid", spacing=(12, 10))
    # slice 0: y0 in 0, 12, 24 (24 + 16 = 40); x0 in 0, 10, 20, 30 (30 + 16 = 46 <= 50; 40 + 16 > 50)
    # slice 1: y0 = 0 only, x0 = 0 only
    expected = {(0, y, x) for y in (0, 12, 24) for x in (0, 10, 20, 30)} | {(1, 0, 0)}
    first, second = sampler.windows(13), sampler.windows(13)
    assert set(first) == expected and len(set(first)) == 13
    assert set(second) == expected
    assert first != second  # reshuffled for the next pass


def test_weights_are_cut_with_the_same_window():
    lab = np.arange(32 * 32).reshape(32, 32).astype(np.int16) % 2
    weights = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    images = [weights[None].copy()]
    sampler = PatchSampler(images, [lab], patch_size=(16, 16), num_classes=2, rng=np.random.default_rng(0),
                           weights=[weights])
    x, y, w = sampler.sample(8)
    assert np.array_equal(x[:, 0], w)
    with pytest.raises(ValueError, match="weight map 0"):
        PatchSampler(images, [lab], patch_size=(16, 16), num_classes=2, rng=np.random.default_rng(0),
                     weights=[weights[:10]])


def test_padding_of_small_slices_gives_unlabelled_and_zero_weight():
    sampler = PatchSampler([np.ones((1, 10, 10), np.float32)], [np.ones((10, 10), np.int16)], patch_size=(16, 16),
                           num_classes=2, rng=np.random.default_rng(0), weights=[np.ones((10, 10), np.float32)],
                           mode="grid")
    _, y, w = sampler.sample(1)
    assert (y[0, 10:] == IGNORE_INDEX).all() and (w[0, 10:] == 0).all() and (w[0, :10, :10] == 1).all()

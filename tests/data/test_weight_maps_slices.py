"""Weight maps of training slices: balance over the whole training set, per-volume rescaling, disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from emseg.data import IGNORE_INDEX, guay_weight_map
from emseg.data import weight_maps_for_slices
from emseg.training._inputs import WEIGHT_CACHE, weight_maps


def test_balance_counts_every_slice_and_ignored_pixels_get_zero():
    # slice a: 6 px class 0, 2 px class 1; slice b: 4 px class 0, 2 px class 1 (+2 unlabelled)
    # totals: class 0 = 10, class 1 = 4 -> balance [4/10, 1] = [0.4, 1]; W = w0 (2) + balance
    a = np.array([[0, 0, 0, 0], [0, 0, 1, 1]])
    b = np.array([[0, 0, 0, 0], [1, 1, IGNORE_INDEX, IGNORE_INDEX]])
    wa, wb = weight_maps_for_slices([a, b], kind="guay", num_classes=2, w0=2.0)
    np.testing.assert_allclose(wa, [[2.4] * 4, [2.4, 2.4, 3.0, 3.0]], rtol=1e-6)
    np.testing.assert_allclose(wb, [[2.4] * 4, [3.0, 3.0, 0.0, 0.0]], rtol=1e-6)


def test_edge_terms_are_rescaled_per_run_of_equal_shapes():
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 3, (3, 12, 12))
    other = rng.integers(0, 3, (10, 14))
    term = [{"source": [1], "target": [0], "alpha": 2.0, "c": 0.1, "sigma": 1.5}]
    maps = weight_maps_for_slices([*vol, other], kind="guay", num_classes=3, w0=1.0, class_balance=False,
                                  edge_terms=term)
    expected_vol = guay_weight_map(vol, num_classes=3, w0=1.0, class_balance=False, edge_terms=term)
    expected_other = guay_weight_map(other, num_classes=3, w0=1.0, class_balance=False, edge_terms=term)
    np.testing.assert_allclose(np.stack(maps[:3]), expected_vol, rtol=1e-6)
    np.testing.assert_allclose(maps[3], expected_other, rtol=1e-6)
    assert max(m.max() for m in maps[:3]) == pytest.approx(3.0)  # w0 + alpha at the volume's peak


def test_unet_border_through_the_slice_helper():
    lab = np.zeros((1, 9, 9), int)
    lab[0, :, :4] = 1
    lab[0, :, 5:] = 1  # two instances separated by the column x = 4
    (w,) = weight_maps_for_slices(list(lab), kind="unet_border", num_classes=2, w0=10.0, sigma=5.0,
                                  foreground=[1], class_balance=False)
    # on the gap: d1 = d2 = 1 -> 1 + 10 exp(-4 / 50)
    np.testing.assert_allclose(w[:, 4], 1 + 10 * np.exp(-4 / 50), rtol=1e-6)
    assert (w[:, :4] == 1).all()
    with pytest.raises(ValueError, match="kind"):
        weight_maps_for_slices(list(lab), kind="border", num_classes=2)


def test_disk_cache_is_reused_and_invalidated(tmp_path):
    labels = [np.array([[0, 1], [1, 1]]), np.array([[0, 0], [1, 0]])]
    spec = {"kind": "guay", "w0": 1.0, "class_balance": True, "edge_terms": []}
    first = weight_maps(spec, labels, num_classes=2, cache_dir=tmp_path)
    stamp = (tmp_path / WEIGHT_CACHE).stat().st_mtime_ns
    again = weight_maps(spec, labels, num_classes=2, cache_dir=tmp_path)
    assert (tmp_path / WEIGHT_CACHE).stat().st_mtime_ns == stamp
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    changed = weight_maps({**spec, "w0": 3.0}, labels, num_classes=2, cache_dir=tmp_path)
    np.testing.assert_allclose(changed[0], first[0] + 2.0, rtol=1e-6)

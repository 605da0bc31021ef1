"""Self-dual grain filter (higra tree of shapes + area filter)."""

from __future__ import annotations

import numpy as np
import pytest

from emseg.data._grain import GrainFilterCache, add_grain_channels, grain_filter


def _scene():
    im = np.full((48, 48), 100.0)
    im[5:8, 5:8] = 200.0     # bright grain, area 9
    im[40:44, 40:44] = 10.0  # dark grain, area 16
    im[15:30, 12:32] = 160.0  # large square, area 300
    im[20:22, 20:22] = 90.0  # dark grain inside the square, area 4
    return im


def test_removes_bright_and_dark_grains_below_lambda_and_keeps_large_shapes():
    out = grain_filter(_scene(), 20)
    expected = np.full((48, 48), 100.0)
    expected[15:30, 12:32] = 160.0  # the square stays with its exact contour; its hole is filled
    assert np.array_equal(out, expected.astype(np.float32))


def test_lambda_boundary_and_identity_for_small_lambda():
    im = _scene()
    assert np.array_equal(grain_filter(im, 1), im.astype(np.float32))
    out = grain_filter(im, 16)  # area 16 is kept (area >= lambda), 9 and 4 go
    assert (out[40:44, 40:44] == 10).all() and (out[5:8, 5:8] == 100).all() and (out[20:22, 20:22] == 160).all()
    assert (grain_filter(im, 301) == 100).all()  # everything smaller than the image goes


def test_self_dual():
    rng = np.random.default_rng(0)
    im = rng.integers(0, 255, (32, 40)).astype(np.float64)
    for area in (3, 20, 100):
        np.testing.assert_array_equal(grain_filter(-im, area), -grain_filter(im, area))


def test_channels_order_and_cache():
    im = _scene().astype(np.uint8)
    context = np.stack([im * 0, im, im * 0])  # centre slice = im
    stack = add_grain_channels(context, [20, 400])
    assert stack.shape == (5, 48, 48)
    assert np.array_equal(stack[:3], context) and np.array_equal(stack[3], grain_filter(im, 20))
    assert (stack[4] == 100).all()
    cache = GrainFilterCache([20])
    first = cache(im)
    assert cache(im.copy()) is first  # same content -> cached
    assert add_grain_channels(im, []).shape == (1, 48, 48)
    with pytest.raises(ValueError, match="2-D"):
        grain_filter(context, 5)

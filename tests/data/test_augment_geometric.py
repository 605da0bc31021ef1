"""Continuous spatial augmentation: labels stay aligned, known points map where they should."""

from __future__ import annotations

import numpy as np
import pytest

from emseg.config import AugmentConfig
from emseg.data import augment_batch, epoch_elastic_field
from emseg.data._geometric import (
    coarse_elastic_field,
    grid_distortion_coords,
    identity_coords,
    rotate_zoom_coords,
    warp,
)

OFF = dict(flips=False, rot90=False, transpose=False, brightness=0.0, contrast=0.0)


def _blocks(n=32, classes=4, seed=0):
    """A label image of 8x8 blocks with random classes (so every patch has edges)."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, classes, (n // 8, n // 8)), np.ones((8, 8), int))


def test_free_rotation_by_90_equals_rot90():
    lab = _blocks()
    img = lab.astype(np.float32)[None] + 0.25
    coords = rotate_zoom_coords(identity_coords(lab.shape), lab.shape, angle=90)
    x, y, w = warp(img, lab, coords, weights=lab.astype(np.float32))
    assert np.array_equal(y, np.rot90(lab))
    np.testing.assert_allclose(x[0], np.rot90(img[0]), atol=1e-5)
    np.testing.assert_allclose(w, np.rot90(lab).astype(np.float32), atol=1e-5)


def test_zoom_of_a_centred_dot():
    # a 5x5 dot at the centre of a 41x41 patch; zoom 3 -> 15x15 at the same centre
    lab = np.zeros((41, 41), int)
    lab[18:23, 18:23] = 1
    coords = rotate_zoom_coords(identity_coords(lab.shape), lab.shape, zoom=3.0)
    _, y, _ = warp(lab[None].astype(np.float32), lab, coords)
    ys, xs = np.nonzero(y)
    assert ys.mean() == pytest.approx(20.0) and xs.mean() == pytest.approx(20.0)
    # source of output pixel p is 20 + (p - 20)/3, inside the dot [18, 22] (after rounding) for
    # |p - 20| <= 7 (|p - 20| / 3 <= 2.33 < 2.5) -> p in 13..27, a 15 x 15 square (no rounding ties)
    assert y.sum() == 225
    assert y[13:28, 13:28].all()


def test_grid_distortion_map_is_monotone_piecewise_linear_with_fixed_ends():
    shape = (33, 33)
    coords = grid_distortion_coords(identity_coords(shape), shape, steps_y=np.array([1.5, 0.5]),
                                    steps_x=np.array([1.0, 1.0]))
    # y: two cells of 16 px stretched 1.5 / 0.5 -> source knots 0, 24, 32 (already ending at 32)
    assert coords[0][0, 0] == 0 and coords[0][16, 0] == pytest.approx(24.0) and coords[0][32, 0] == pytest.approx(32.0)
    assert coords[0][8, 5] == pytest.approx(12.0)  # linear within the cell
    np.testing.assert_allclose(coords[1], identity_coords(shape)[1])  # x untouched


def test_coarse_elastic_field_is_bilinear_between_nodes():
    rng = np.random.default_rng(0)
    field = coarse_elastic_field((17, 17), alpha=3.0, spacing=8.0, rng=rng)
    assert field.shape == (2, 17, 17)
    # nodes at 0, 8, 16: the midpoint between two nodes is their mean
    assert field[0, 4, 0] == pytest.approx((field[0, 0, 0] + field[0, 8, 0]) / 2)
    assert field[1, 8, 12] == pytest.approx((field[1, 8, 8] + field[1, 8, 16]) / 2)


@pytest.mark.parametrize("options", [
    {"rotation": 30.0}, {"zoom": [0.7, 1.4]}, {"grid_distortion": 0.3}, {"elastic": "simard", "elastic_alpha": 20.0},
    {"elastic": "guay", "elastic_alpha": 20.0, "elastic_sigma": 4.0},
    {"rotation": 180.0, "zoom": [0.8, 1.25], "grid_distortion": 0.2, "elastic": "simard", "flips": True, "rot90": True},
])
def test_label_follows_image_and_keeps_class_values(options):
    # the image equals its label: after augmentation the nearest-neighbour label must agree with the
    # linearly resampled image wherever the image is not a blend of two classes (away from edges)
    cfg = AugmentConfig(**{**OFF, "spatial_probability": 1.0, **options})
    rng = np.random.default_rng(1)
    lab = np.stack([_blocks(seed=s) for s in range(3)])
    img = lab[:, None].astype(np.float32)
    weights = lab.astype(np.float32) * 10
    field = epoch_elastic_field(cfg, (32, 32), rng)
    x, y, w = augment_batch(img, lab, cfg, rng, weights=weights, epoch_field=field)
    assert x.shape == img.shape and y.shape == lab.shape and w.shape == lab.shape
    assert set(np.unique(y)) <= set(range(4))
    pure = np.abs(x[:, 0] - np.round(x[:, 0])) < 1e-4  # not interpolated across an edge
    assert pure.mean() > 0.5
    assert np.array_equal(np.round(x[:, 0][pure]).astype(int), y[pure])
    np.testing.assert_allclose(w[pure], 10 * x[:, 0][pure], atol=1e-3)
    assert not np.array_equal(y, lab)  # something happened


def test_3d_patches_get_the_same_in_plane_transform_per_slice():
    cfg = AugmentConfig(**{**OFF, "rotation": 45.0, "spatial_probability": 1.0})
    lab2d = _blocks()
    lab = np.stack([lab2d, lab2d])[None]  # (B=1, Z=2, Y, X)
    img = lab[:, None].astype(np.float32)  # (B, C=1, Z, Y, X)
    x, y = augment_batch(img, lab, cfg, np.random.default_rng(0))
    assert x.shape == img.shape and y.shape == lab.shape
    assert np.array_equal(y[0, 0], y[0, 1]) and not np.array_equal(y[0, 0], lab2d)


def test_noise_and_defaults_off():
    cfg = AugmentConfig(**{**OFF, "noise_std": 0.5})
    x = np.zeros((4, 1, 16, 16), np.float32)
    out, _ = augment_batch(x, np.zeros((4, 16, 16), int), cfg, np.random.default_rng(0))
    assert out.std() == pytest.approx(0.5, rel=0.1)
    default = AugmentConfig()
    assert default.rotation == 0 and default.zoom is None and default.grid_distortion == 0
    assert default.elastic == "off" and default.noise_std == 0
    assert epoch_elastic_field(default, (16, 16), np.random.default_rng(0)) is None


def test_bad_zoom_range():
    with pytest.raises(ValueError, match="zoom"):
        AugmentConfig(zoom=[1.5, 1.0])

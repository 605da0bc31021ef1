"""Volume prediction: 3-D sliding windows, 2-D models stacked, valid-padding tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emseg.data import Normalizer
from emseg.inference import Predictor
from emseg.inference._valid_tiling import axis_tiling, predict_valid_tiles
from emseg.models import build_model

NORM = Normalizer(mean=100.0, std=20.0)


def _predictor(name, options, **kwargs):
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=2, options=options).eval()
    return Predictor(model, classes=["interior", "membrane"], normalizer=NORM, device=torch.device("cpu"),
                     precision="fp32", **kwargs)


def _volume(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 255, shape).astype(np.uint8)


def test_3d_window_larger_than_volume_is_one_forward_pass():
    """z window 5 clipped to a 3-section volume: the result is the plain forward pass of the whole volume."""
    pred = _predictor("hybrid2d3d", {"features": [4, 8], "features_3d": 4}, window_3d=(5, 64, 64))
    volume = _volume((3, 40, 36))
    probs = pred.predict_proba_volume(volume)
    assert probs.shape == (2, 3, 40, 36) and probs.dtype == np.float32
    with torch.no_grad():
        direct = torch.softmax(pred.model(torch.from_numpy(NORM(volume))[None, None]), 1)[0].numpy()
    np.testing.assert_allclose(probs, direct, atol=1e-5)


def test_3d_sliding_window_covers_a_larger_volume():
    pred = _predictor("unet3d-thin", {"features": [4, 8]}, window_3d=(5, 32, 32))
    volume = _volume((9, 50, 45))
    probs = pred.predict_proba_volume(volume)
    assert probs.shape == (2, 9, 50, 45)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    labels, full = pred.predict_volume(volume, probabilities=True)
    assert labels.shape == (9, 50, 45) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, probs.argmax(0))
    np.testing.assert_allclose(full, probs, atol=1e-6)
    # a 3-D model predicting one slice sees it as a one-section volume
    assert pred.predict_proba_slice(volume[4]).shape == (2, 50, 45)


def test_2d_model_volume_is_the_stack_of_its_slices():
    pred = _predictor("unet2d", {"features": [4, 8]})
    volume = _volume((3, 40, 48))
    probs = pred.predict_proba_volume(volume)
    assert probs.shape == (2, 3, 40, 48)
    for z in range(3):
        np.testing.assert_allclose(probs[:, z], pred.predict_proba_slice(volume[z]), atol=1e-6)


def test_predict_proba_volume_rejects_2d_input():
    pred = _predictor("unet3d-thin", {"features": [4, 8]})
    with pytest.raises(ValueError, match=r"\(Z, Y, X\)"):
        pred.predict_proba_volume(np.zeros((20, 20), np.uint8))


def test_valid_tiling_layout_by_hand():
    with torch.device("meta"):
        net = build_model("unet-original", in_channels=1, num_classes=2)
    # 572 -> 388 output; tiles step by 384 (the largest multiple of 16 <= 388) to keep the pooling grid
    t = axis_tiling(1000, 572, net)
    assert (t.window, t.output, t.step, t.count) == (572, 388, 384, 3)
    assert t.origins == [0, 384, 768] and t.padded == 768 + 572 and t.pad_after == 1340 - 1000 - 92
    # an axis whose output fits one window gets the smallest valid window covering it
    small = axis_tiling(100, 572, net)
    assert small.count == 1 and small.window == 284 and small.output == 100  # 100 + 2 * 92 = 284 is valid
    assert axis_tiling(388, 572, net).count == 1 and axis_tiling(389, 572, net).count == 2


def test_valid_padding_tiles_equal_a_single_window():
    """Stitched output tiles equal one window over the whole (reflect-padded) image, and cover every pixel."""
    pred_tiled = _predictor("unet-original", {"features": [4, 8, 16]}, window=(60, 60))
    model = pred_tiled.model
    assert model.output_margin == 20 and model.alignment == 4
    image = _volume((1, 50, 61))[0]
    tiling = [axis_tiling(n, 60, model) for n in image.shape]
    assert [t.count for t in tiling] == [3, 4]  # several tiles per axis (output 20, step 20)
    tiled = pred_tiled.predict_proba_slice(image)
    assert tiled.shape == (2, 50, 61)
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)
    # one window: the image padded by the margin (reflect), extended to a valid size, cropped back
    big = Predictor(model, classes=["a", "b"], normalizer=NORM, window=(200, 200), device=torch.device("cpu"),
                    precision="fp32").predict_proba_slice(image)
    np.testing.assert_allclose(tiled, big, atol=1e-5)
    m = model.output_margin
    x = np.pad(NORM(image), m, mode="reflect")
    sy, sx = model.valid_input_size(x.shape[0]), model.valid_input_size(x.shape[1])
    x = np.pad(x, ((0, sy - x.shape[0]), (0, sx - x.shape[1])), mode="reflect")
    with torch.no_grad():
        direct = torch.softmax(model(torch.from_numpy(x)[None, None]), 1)[0, :, :50, :61].numpy()
    np.testing.assert_allclose(tiled, direct, atol=1e-5)


def test_valid_tiles_batching_does_not_change_the_result():
    torch.manual_seed(1)
    model = build_model("unet-original", in_channels=1, num_classes=3, options={"features": [4, 8]}).eval()
    image = torch.randn(1, 1, 45, 33)
    with torch.no_grad():
        a = predict_valid_tiles(model, image, window=(30, 30), batch_size=1)
        b = predict_valid_tiles(model, image, window=(30, 30), batch_size=16)
    assert a.shape == (1, 3, 45, 33)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

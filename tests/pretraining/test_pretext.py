"""The pretext tasks by hand: block masks, the reconstruction target and loss, InfoNCE, EM views, MoCo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emseg.models import build_model
from emseg.pretraining import MoCo, em_augment, info_nce, mask_blocks, masked_input, mim_loss, mim_target


def test_mask_blocks_masks_whole_blocks_at_the_ratio():
    mask = mask_blocks((6, 8), block=(2, 4), ratio=0.5, rng=np.random.default_rng(0))
    assert mask.shape == (6, 8) and mask.dtype == bool
    assert mask.sum() == 3 * 2 * 4  # 3 of the 3 x 2 cells
    cells = mask.reshape(3, 2, 2, 4).transpose(0, 2, 1, 3).reshape(3, 2, 8)
    assert all(c.all() or not c.any() for row in cells for c in row)  # every 2 x 4 block all or nothing


def test_mask_blocks_cut_short_at_the_border_and_in_3d():
    mask = mask_blocks((5, 7), block=(2, 4), ratio=1.0, rng=np.random.default_rng(0))
    assert mask.all()  # every cell, the short last ones included
    mask3 = mask_blocks((3, 4, 4), block=(1, 2, 2), ratio=0.25, rng=np.random.default_rng(1))
    assert mask3.shape == (3, 4, 4) and mask3.sum() == round(0.25 * 12) * 4


def test_masked_input_hides_the_same_pixels_in_every_channel():
    x = torch.arange(12, dtype=torch.float32).reshape(1, 3, 2, 2) + 1
    mask = torch.tensor([[[True, False], [False, True]]])
    out = masked_input(x, mask)
    expected = x.clone()
    expected[0, :, 0, 0] = 0
    expected[0, :, 1, 1] = 0
    assert torch.equal(out, expected)
    assert torch.equal(mim_target(x), x[:, 1:2])  # the centre section of a 2.5-D input


def test_mim_loss_is_the_mean_absolute_error_over_masked_pixels():
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = torch.tensor([[[True, False], [False, True]]])
    assert mim_loss(torch.zeros(1, 1, 2, 2), target, mask).item() == pytest.approx((1 + 4) / 2)
    # a valid-padding network predicts the centre only: target and mask are cropped to it
    target3 = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3)
    mask3 = torch.zeros(1, 3, 3, dtype=torch.bool)
    mask3[0, 1, 1] = True
    assert mim_loss(torch.full((1, 1, 1, 1), 1.0), target3, mask3).item() == pytest.approx(abs(1 - 4))


def test_info_nce_matches_a_hand_worked_value():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    # sample 1: logits (1, 0, -1) / tau; sample 2: (0, 1, 0) / tau
    for tau in (1.0, 0.5):
        one = math.log(1 + math.exp(-1 / tau) + math.exp(-2 / tau))
        two = -math.log(1 / (1 + math.exp(1 / tau) + 1))
        assert info_nce(q, k, queue, temperature=tau).item() == pytest.approx((one + two) / 2, abs=1e-6)
    assert info_nce(q, k, queue, temperature=1.0).item() == pytest.approx((0.407606 + 1.551445) / 2, abs=1e-5)


def test_em_views_keep_the_shape_and_change_the_patch():
    x = torch.randn(3, 1, 32, 32)
    a = em_augment(x, np.random.default_rng(0))
    b = em_augment(x, np.random.default_rng(0))
    assert a.shape == x.shape and torch.equal(a, b)  # seeded
    assert not torch.allclose(a, x)
    v = em_augment(torch.randn(2, 1, 4, 32, 32), np.random.default_rng(1))  # 3-D patches
    assert v.shape == (2, 1, 4, 32, 32)


def test_moco_step_updates_the_momentum_encoder_and_the_queue():
    torch.manual_seed(0)
    net = build_model("unet2d", in_channels=1, num_classes=1, options={"features": [4, 8]})
    moco = MoCo(net, example=torch.zeros(1, 1, 32, 32), dim=16, queue=8, momentum=0.9)
    first = next(net.parameters())
    with torch.no_grad():
        first.add_(1.0)  # the query encoder moved: the key encoder follows by 1 - momentum
    key_before = next(moco.key_network.parameters()).clone()
    queue_before = moco.queue.clone()
    x = torch.randn(4, 1, 32, 32)
    loss = moco(x, x.flip(-1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    torch.testing.assert_close(next(moco.key_network.parameters()), 0.9 * key_before + 0.1 * first.detach())
    assert int(moco.pointer) == 4
    assert not torch.equal(moco.queue[:4], queue_before[:4]) and torch.equal(moco.queue[4:], queue_before[4:])
    loss.backward()
    assert net.encoders[-1][0].conv.weight.grad is not None  # the encoder learns ...
    assert net.head.conv.weight.grad is None  # ... the decoder is not even run


def test_blur_kernel_follows_the_input_device(monkeypatch):
    """The MoCo blur ran its kernel on the CPU for CUDA inputs (found on a lent H200: 'Input type
    (torch.cuda.FloatTensor) and weight type (torch.FloatTensor) should be the same').  Checked here with
    the meta device, on which conv2d itself does not compare devices."""
    import torch.nn.functional as F

    from emseg.pretraining import _moco

    seen, original = [], F.conv2d

    def conv2d(x, weight, *args, **kwargs):
        seen.append((x.device, weight.device))
        return original(x, weight, *args, **kwargs)

    monkeypatch.setattr(_moco.F, "conv2d", conv2d)
    out = _moco._blur_yx(torch.zeros((2, 16, 16), device="meta"), 1.0)
    assert out.shape == (2, 16, 16) and out.device.type == "meta"
    assert seen and all(x == w for x, w in seen), seen

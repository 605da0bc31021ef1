"""DiceCELoss against hand-worked values; ignored pixels never contribute."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from emseg.data import IGNORE_INDEX
from emseg.training import DiceCELoss, class_weights_from_frequencies


def _logits(values):
    return torch.tensor(values, dtype=torch.float32).T.reshape(1, 2, 1, -1)  # (N=1, C=2, 1, P)


def test_hand_worked_value():
    # Two pixels, uniform probabilities: CE = ln 2; Dice per class = 2*0.5 / (1 + 1) = 0.5 -> loss 0.5.
    logits = _logits([[0.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([[[0, 1]]])
    loss = DiceCELoss()(logits, target)
    assert float(loss) == pytest.approx(math.log(2) + 0.5, abs=1e-4)


def test_ignored_pixels_do_not_contribute():
    target = torch.tensor([[[0, 1, IGNORE_INDEX]]])
    a = DiceCELoss()(_logits([[2.0, -1.0], [0.5, 0.3], [9.0, -9.0]]), target)
    b = DiceCELoss()(_logits([[2.0, -1.0], [0.5, 0.3], [-9.0, 9.0]]), target)
    assert float(a) == pytest.approx(float(b), abs=1e-6)
    ref = DiceCELoss()(_logits([[2.0, -1.0], [0.5, 0.3]]), torch.tensor([[[0, 1]]]))
    assert float(a) == pytest.approx(float(ref), abs=1e-6)


def test_perfect_prediction_has_near_zero_loss():
    target = torch.tensor([[[0, 1, 1, 0]]])
    logits = _logits([[20.0, -20.0], [-20.0, 20.0], [-20.0, 20.0], [20.0, -20.0]])
    assert float(DiceCELoss()(logits, target)) < 1e-3


def test_class_weights_reach_cross_entropy():
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    w = torch.tensor([0.2, 1.0, 3.0])
    loss = DiceCELoss(class_weights=w, dice_weight=0.0)(logits, target)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, target, weight=w)), abs=1e-6)


def test_class_weights_from_frequencies():
    w = class_weights_from_frequencies(__import__("numpy").array([0.64, 0.36, 0.0]))
    # 1/sqrt: 1.25, 1.6667 -> mean 1.4583 -> 0.857, 1.143; absent class 0
    assert w.tolist() == pytest.approx([0.857142, 1.142857, 0.0], abs=1e-5)


def test_rare_class_weights_from_frequencies():
    import numpy as np

    w = class_weights_from_frequencies(np.array([0.6, 0.3, 0.06, 0.04, 0.0]), "rare")
    # median of the present classes (0.3 + 0.06) / 2 = 0.18; max(1, sqrt(0.18 / f)); absent class 0
    assert w.tolist() == pytest.approx([1.0, 1.0, 3 ** 0.5, 4.5 ** 0.5, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="'auto' or 'rare'"):
        class_weights_from_frequencies(np.array([0.5, 0.5]), "median")

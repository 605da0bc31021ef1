"""Learning-rate schedules: traces worked out by hand, plateau rule checked against torch."""

from __future__ import annotations

import math

import pytest
import torch

from emseg.training._schedules import (
    cosine_factor,
    exponential_factor,
    learning_rate,
    plateau_scale,
    warmup_factor,
)


def test_constant_and_cosine_traces():
    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [learning_rate(0.1, "constant", fraction=f, step=0) for f in fractions] == [0.1] * 5
    # 0.5 (1 + cos(pi f)): 1, 0.853553, 0.5, 0.146447, 0
    expected = [0.1, 0.0853553, 0.05, 0.0146447, 0.0]
    got = [learning_rate(0.1, "cosine", fraction=f, step=0) for f in fractions]
    assert got == pytest.approx(expected, abs=1e-7)
    assert cosine_factor(1.7) == 0.0 and cosine_factor(-1) == 1.0


def test_exponential_is_rate_to_the_step_over_n():
    # lr * rate ** (step / N): 0.01 * 0.5 ** (0, 0.5, 1, 2) for N = 100
    trace = [learning_rate(0.01, "exponential", fraction=0.0, step=s, decay_rate=0.5, decay_steps=100)
             for s in (0, 50, 100, 200)]
    assert trace == pytest.approx([0.01, 0.01 / math.sqrt(2), 0.005, 0.0025])
    assert exponential_factor(300, rate=0.9, steps=300) == pytest.approx(0.9)


def test_linear_warmup_then_schedule():
    # 10 % warm-up: fraction 0.02 -> 0.2, 0.05 -> 0.5, then the schedule alone
    assert warmup_factor(0.02, 0.1) == pytest.approx(0.2)
    assert warmup_factor(0.1, 0.1) == 1.0
    assert warmup_factor(0.5, 0.0) == 1.0
    trace = [learning_rate(1.0, "constant", fraction=f, step=0, warmup_fraction=0.1) for f in (0.0, 0.05, 0.1, 0.6)]
    assert trace == pytest.approx([0.0, 0.5, 1.0, 1.0])
    # warm-up multiplies any schedule: cosine at f=0.05 is 0.993844, times 0.5
    assert learning_rate(1.0, "cosine", fraction=0.05, step=0, warmup_fraction=0.1) == pytest.approx(0.5 * 0.9938442)


def test_plateau_hand_trace():
    # patience 2, factor 0.25 (divide by 4); scores per epoch (max mode):
    # 0.5 best | 0.4 bad1 | 0.45 bad2 -> cut (x0.25), reset | 0.6 best | 0.6 bad1 (not better) | 0.3 bad2 -> cut
    history = [0.5, 0.4, 0.45, 0.6, 0.6, 0.3]
    scales = [plateau_scale(history[:k], factor=0.25, patience=2) for k in range(len(history) + 1)]
    assert scales == pytest.approx([1, 1, 1, 0.25, 0.25, 0.25, 0.0625])
    # min mode (loss), NaN counts as a bad epoch
    assert plateau_scale([1.0, 0.9, float("nan"), 0.95], factor=0.5, patience=2, mode="min") == 0.5
    with pytest.raises(ValueError, match="mode"):
        plateau_scale([1.0], factor=0.5, patience=1, mode="up")


@pytest.mark.parametrize("mode", ["max", "min"])
def test_plateau_matches_torch_reduce_lr_on_plateau(mode):
    g = torch.Generator().manual_seed(0)
    history = torch.rand(40, generator=g).tolist()
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    torch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=3, threshold=0.0,
                                                             min_lr=0.0, eps=0.0)
    for k, value in enumerate(history, start=1):
        torch_sched.step(value)
        # torch cuts when bad epochs exceed patience; ours with patience + 1 reproduces it
        assert plateau_scale(history[:k], factor=0.5, patience=4, mode=mode) == pytest.approx(opt.param_groups[0]["lr"])


def test_unknown_schedule():
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate(0.1, "linear", fraction=0.0, step=0)

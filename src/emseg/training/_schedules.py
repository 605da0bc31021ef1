"""Learning-rate schedules as pure functions of the training progress.

The trainer asks :func:`learning_rate` for the rate of every optimisation step;
nothing here holds state, so a learning-rate trace is easy to test and a
resumed run continues exactly (the plateau schedule is a function of the
validation history, which the trainer stores in ``last.pt``).

``fraction`` is the fraction of the training budget used so far (time or
iterations, whichever is further along), ``step`` the number of optimisation
steps taken.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "SCHEDULES",
    "cosine_factor",
    "exponential_factor",
    "learning_rate",
    "plateau_scale",
    "warmup_factor",
]

SCHEDULES = ("cosine", "constant", "exponential", "plateau")


def warmup_factor(fraction: float, warmup_fraction: float) -> float:
    """Linear warm-up: ``fraction / warmup_fraction`` until ``warmup_fraction``, then 1."""
    if warmup_fraction <= 0 or fraction >= warmup_fraction:
        return 1.0
    return max(fraction, 0.0) / warmup_fraction


def cosine_factor(fraction: float) -> float:
    """``0.5 (1 + cos(pi * fraction))``: 1 at the start, 0 at the end of the budget."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))


def exponential_factor(step: int, *, rate: float, steps: int) -> float:
    """``rate ** (step / steps)`` (TensorFlow's ``exponential_decay``, not staircase)."""
    return rate ** (step / steps)


def plateau_scale(history: Sequence[float | None], *, factor: float, patience: int, mode: str = "max") -> float:
    """Cumulative reduce-on-plateau factor after the epochs in ``history``.

    Same rule as ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (threshold 0,
    no cooldown): an epoch whose score does not beat the best so far is "bad";
    after ``patience`` consecutive bad epochs the rate is multiplied by
    ``factor`` and the count restarts.  ``None`` / NaN scores count as bad.

    Args:
        history: validation score of each finished epoch, in order.
        factor: multiplier per cut (0.25 divides by 4).
        patience: bad epochs tolerated before a cut.
        mode: ``"max"`` (IoU, F1, AUC) or ``"min"`` (loss).

    Returns:
        ``factor ** number_of_cuts``.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    best = -math.inf
    bad = cuts = 0
    for value in history:
        score = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
        if score is not None and mode == "min":
            score = -score
        if score is not None and score > best:
            best, bad = score, 0
        else:
            bad += 1
            if bad >= patience:
                cuts += 1
                bad = 0
    return factor**cuts


def learning_rate(
    base_lr: float,
    schedule: str,
    *,
    fraction: float,
    step: int,
    warmup_fraction: float = 0.0,
    decay_rate: float = 0.96,
    decay_steps: int = 1000,
    plateau: float = 1.0,
) -> float:
    """The learning rate of one step: ``base_lr * warm-up * schedule``.

    Args:
        base_lr: ``training.learning_rate``.
        schedule: ``cosine`` | ``constant`` | ``exponential`` | ``plateau``.
        fraction: budget fraction used, in ``[0, 1]``.
        step: optimisation steps taken so far.
        warmup_fraction: linear warm-up length as a fraction of the budget (any schedule).
        decay_rate, decay_steps: exponential schedule.
        plateau: the current :func:`plateau_scale` (plateau schedule only).
    """
    if schedule == "cosine":
        factor = cosine_factor(fraction)
    elif schedule == "constant":
        factor = 1.0
    elif schedule == "exponential":
        factor = exponential_factor(step, rate=decay_rate, steps=decay_steps)
    elif schedule == "plateau":
        factor = plateau
    else:
        raise ValueError(f"unknown lr_schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    return base_lr * warmup_factor(fraction, warmup_fraction) * factor

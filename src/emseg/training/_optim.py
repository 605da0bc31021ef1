"""Optimisers with per-parameter-group L2 weight decay."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from emseg._registry import suggest

logger = logging.getLogger(__name__)

__all__ = ["build_optimizer", "parameter_groups"]


def parameter_groups(model: nn.Module, *, weight_decay: float, groups: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Split the model's parameters into optimiser groups with their own L2 weight decay.

    A model may expose ``param_groups() -> dict[str, list[Parameter]]`` (for
    instance the 2D part, the 3D part and the heads of a hybrid network).
    ``groups`` maps some of those names to a weight decay; every other
    parameter (in an unnamed group or not listed) gets ``weight_decay``.

    Raises:
        ValueError: ``groups`` is given but the model has no ``param_groups()``,
            or names a group the model does not have (the message lists them).
    """
    groups = dict(groups or {})
    params = [p for p in model.parameters() if p.requires_grad]
    if not groups:
        return [{"params": params, "weight_decay": weight_decay, "name": "all"}]
    if not callable(getattr(model, "param_groups", None)):
        raise ValueError(
            f"training.weight_decay_groups {sorted(groups)} needs a model with named parameter groups "
            f"(param_groups()); model {type(model).__name__} has none: use training.weight_decay instead"
        )
    named: dict[str, list[nn.Parameter]] = dict(model.param_groups())
    unknown = [name for name in groups if name not in named]
    if unknown:
        raise ValueError(
            f"training.weight_decay_groups names {unknown[0]!r}, which model {type(model).__name__} does not have."
            f"{suggest(unknown[0], list(named))} Its groups: {', '.join(named)}"
        )
    out, seen = [], set()
    for name, decay in groups.items():
        group = [p for p in named[name] if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in group)
        out.append({"params": group, "weight_decay": float(decay), "name": name})
    rest = [p for p in params if id(p) not in seen]
    if rest:
        out.append({"params": rest, "weight_decay": weight_decay, "name": "other"})
    return [g for g in out if g["params"]]


def build_optimizer(model: nn.Module, *, name: str, learning_rate: float, weight_decay: float,
                    weight_decay_groups: dict[str, float] | None = None, momentum: float = 0.9,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """``adam`` | ``radam`` | ``sgd`` over :func:`parameter_groups` (L2 added to the gradient)."""
    groups = parameter_groups(model, weight_decay=weight_decay, groups=weight_decay_groups)
    if name == "adam":
        return torch.optim.Adam(groups, lr=learning_rate)
    if name == "radam":
        return torch.optim.RAdam(groups, lr=learning_rate)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=nesterov and momentum > 0)
    raise ValueError(f"unknown optimizer {name!r}.{suggest(name, ['adam', 'radam', 'sgd'])} Choose adam, radam or sgd")

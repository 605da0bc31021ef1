"""The training loss a configuration describes (``training.loss``, ``class_weights``, heads)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from emseg.losses._registry import MultiHeadLoss, WeightedSumLoss, build_loss

__all__ = ["AUTO_OPTIONS", "DEFAULT_AUX_WEIGHTS", "build_criterion", "loss_spec", "multi_head", "resolve_auto"]

#: Weight of an auxiliary head when ``training.aux_loss_weights`` does not name it
#: (the 2D-3D network's c2D-weighted 2D head).
DEFAULT_AUX_WEIGHTS = {"aux2d": 0.33}


def loss_spec(training: Any) -> dict[str, Any]:
    """``training.loss``, or today's default: ``ce_weight * CE(class_weights) + dice_weight * Dice``.

    With ``training.weight_map`` set and no ``loss``, the default is ``weighted_ce`` alone.
    """
    if training.loss is not None:
        return dict(training.loss)
    if training.weight_map is not None:
        return {"weighted_ce": 1.0}
    spec = {"ce": training.ce_weight, "dice": training.dice_weight}
    if not any(spec.values()):
        raise ValueError("training.ce_weight and training.dice_weight are both 0: give one a positive weight or set training.loss")
    return spec


#: Loss options that accept ``auto``: per-class values from the training class frequencies.
AUTO_OPTIONS = ("class_weights", "alpha")


def resolve_auto(spec: dict[str, Any], auto_weights: list[float]) -> dict[str, Any]:
    """Replace ``auto`` in per-class loss options (:data:`AUTO_OPTIONS`) with ``auto_weights``."""
    out: dict[str, Any] = {}
    for name, value in spec.items():
        if isinstance(value, dict):
            value = {k: (list(auto_weights) if k in AUTO_OPTIONS and v == "auto" else v) for k, v in value.items()}
        out[name] = value
    return out


def build_criterion(training: Any, *, num_classes: int, class_weights: torch.Tensor | None,
                    auto_weights: list[float] | None = None) -> WeightedSumLoss:
    """Build the :class:`WeightedSumLoss` of ``training`` (a :class:`~emseg.config.TrainingConfig`).

    ``class_weights`` (from ``training.class_weights``: auto / null / list) go
    to the ``ce`` term unless its options set their own.  A loss option
    ``class_weights: auto`` or ``alpha: auto`` gets ``auto_weights`` (``1/sqrt``
    class frequency, mean 1; see :func:`~emseg.training.class_weights_from_frequencies`).
    """
    spec = resolve_auto(loss_spec(training), auto_weights if auto_weights is not None else [1.0] * num_classes)
    return build_loss(spec, num_classes=num_classes, class_weights=class_weights)


def multi_head(base: nn.Module, output_keys: list[str], aux_weights: dict[str, float] | None,
               *, main_key: str = "main") -> MultiHeadLoss:
    """Wrap ``base`` for a model returning ``{main_key: ..., aux: ...}`` in training mode.

    Heads named in ``aux_weights`` get that weight; other auxiliary heads get
    :data:`DEFAULT_AUX_WEIGHTS` or, if absent there, raise a ValueError asking
    for ``training.aux_loss_weights``.
    """
    if main_key not in output_keys:
        raise ValueError(f"the model returns outputs {output_keys} in training mode but none is called {main_key!r}")
    weights: dict[str, float] = {}
    for key in output_keys:
        if key == main_key:
            continue
        if aux_weights and key in aux_weights:
            weights[key] = float(aux_weights[key])
        elif key in DEFAULT_AUX_WEIGHTS:
            weights[key] = DEFAULT_AUX_WEIGHTS[key]
        else:
            raise ValueError(f"the model has an auxiliary output {key!r}: give its loss weight in "
                             f"training.aux_loss_weights (e.g. {{{key}: 0.33}})")
    unused = sorted(set(aux_weights or {}) - set(weights))
    if unused:
        raise ValueError(f"training.aux_loss_weights names {unused} but the model's outputs are {output_keys}")
    return MultiHeadLoss(base, weights, main_key=main_key)

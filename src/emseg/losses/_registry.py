"""Loss registry: named segmentation losses, weighted sums of them, auxiliary heads.

Every loss here is called as ``loss(logits, target, weight_map=None)`` with

* ``logits``: ``(N, C, Y, X)`` or ``(N, C, Z, Y, X)`` raw network outputs,
* ``target``: ``(N, Y, X)`` or ``(N, Z, Y, X)`` integer class indices, with
  :data:`~emseg.data.IGNORE_INDEX` on unlabelled pixels,
* ``weight_map``: optional per-voxel weights shaped like ``target`` (only
  ``weighted_ce`` uses it; the others accept and ignore it).

Unlabelled pixels never contribute: not to a numerator, not to a denominator,
not to a gradient.  A batch with no labelled pixel gives a loss of 0.

Example::

    loss = build_loss({"focal": {"weight": 1.0, "gamma": 2}, "dice": 1.0}, num_classes=3)
    value = loss(logits, target)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from emseg._registry import Registry, suggest
from emseg.losses._terms import (
    CrossEntropyLoss,
    FocalLoss,
    JaccardLogLoss,
    SoftDiceLoss,
    WeightedCrossEntropyLoss,
)

__all__ = [
    "LOSSES",
    "CrossEntropyLoss",
    "FocalLoss",
    "JaccardLogLoss",
    "MultiHeadLoss",
    "SoftDiceLoss",
    "WeightedCrossEntropyLoss",
    "WeightedSumLoss",
    "build_loss",
]

#: Losses by name.  An entry is an ``nn.Module`` class whose constructor takes
#: keyword-only options (``num_classes`` is always supplied by :func:`build_loss`).
LOSSES: Registry[type[nn.Module]] = Registry("loss")

#: Entries that receive ``build_loss(..., class_weights=...)`` when their spec does
#: not set ``class_weights`` itself.  Only the cross-entropy: the per-class
#: weights of Dice / Jaccard mean something else (weights of the per-class scores).
_TAKES_GLOBAL_CLASS_WEIGHTS = ("ce",)


LOSSES.register("ce", CrossEntropyLoss)
LOSSES.register("weighted_ce", WeightedCrossEntropyLoss)
LOSSES.register("focal", FocalLoss)
LOSSES.register("dice", SoftDiceLoss)
LOSSES.register("jaccard_log", JaccardLogLoss)


class WeightedSumLoss(nn.Module):
    """``sum_k weight_k * loss_k(logits, target, weight_map=...)``; built by :func:`build_loss`.

    After each call, :attr:`last_terms` maps each loss name to its (detached,
    unweighted) value, for logging.
    """

    def __init__(self, terms: Mapping[str, tuple[float, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("a loss needs at least one term")
        self.weights = {name: float(w) for name, (w, _) in terms.items()}
        self.losses = nn.ModuleDict({name: module for name, (_, module) in terms.items()})
        self.last_terms: dict[str, torch.Tensor] = {}

    @property
    def requires_weight_map(self) -> bool:
        """True when a term (``weighted_ce``) must be given ``weight_map``."""
        return any(getattr(m, "requires_weight_map", False) for m in self.losses.values())

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
        total: torch.Tensor | None = None
        for name, module in self.losses.items():
            value = module(logits, target, weight_map=weight_map)
            self.last_terms[name] = value.detach()
            term = self.weights[name] * value
            total = term if total is None else total + term
        assert total is not None
        return total

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={w:g}" for name, w in self.weights.items())


def _options_of(entry: type[nn.Module]) -> list[str]:
    params = inspect.signature(entry.__init__).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "num_classes"]


def build_loss(spec: Mapping[str, float | Mapping[str, Any]], *, num_classes: int,
               class_weights: Sequence[float] | torch.Tensor | None = None) -> WeightedSumLoss:
    """Build the weighted sum of registered losses described by ``spec``.

    Args:
        spec: loss name -> weight, or loss name -> ``{"weight": w, **options}``
            (``weight`` defaults to 1), e.g. ``{"focal": 1.0, "dice": 1.0}`` or
            ``{"focal": {"weight": 1, "alpha": 0.25, "gamma": 2}, "dice": {"class_weights": [...]}}``.
            Names: see ``LOSSES.names()``. Terms with weight 0 are left out.
        num_classes: number of classes ``C`` (channels of the logits).
        class_weights: optional ``(C,)`` cross-entropy class weights (e.g. from
            ``training.class_weights``), used by ``ce`` unless its spec sets its own.

    Returns:
        A :class:`WeightedSumLoss`; call it as ``loss(logits, target, weight_map=None)``.

    Raises:
        ValueError: unknown loss name or option (with a suggestion), bad weight or option value.
    """
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"loss spec must be a non-empty mapping name -> weight, e.g. {{'ce': 1.0, 'dice': 1.0}}, got {spec!r}")
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    terms: dict[str, tuple[float, nn.Module]] = {}
    for name, value in spec.items():
        entry = LOSSES.get(str(name))
        if isinstance(value, Mapping):
            options = dict(value)
            weight = options.pop("weight", 1.0)
        else:
            weight, options = value, {}
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"loss {name!r}: weight must be a finite number >= 0, got {weight!r}")
        allowed = _options_of(entry)
        for key in options:
            if key not in allowed:
                raise ValueError(
                    f"loss {name!r} has no option {key!r}.{suggest(key, allowed + ['weight'])} "
                    f"Options: {', '.join(['weight', *allowed])}"
                )
        if name in _TAKES_GLOBAL_CLASS_WEIGHTS and "class_weights" not in options and class_weights is not None:
            options["class_weights"] = class_weights
        if weight == 0:
            continue
        terms[str(name)] = (float(weight), entry(num_classes=num_classes, **options))
    if not terms:
        raise ValueError(f"every loss in {dict(spec)!r} has weight 0; give at least one a positive weight")
    return WeightedSumLoss(terms)


class MultiHeadLoss(nn.Module):
    """Loss for networks with auxiliary outputs: ``base(main) + sum_k c_k * base(aux_k)``.

    Call with a dict of logits ``{"main": (N, C, *spatial), "aux2d": (N, C, *spatial), ...}``
    and the target (same for every head, so every head must have the target's
    spatial shape).  Keyword arguments (``weight_map``) go to every call of ``base``.

    Args:
        base: the loss applied to each head (e.g. from :func:`build_loss`).
        aux_weights: auxiliary head name -> weight ``c_k >= 0``.
        main_key: name of the main output (default ``"main"``).
    """

    def __init__(self, base: nn.Module, aux_weights: Mapping[str, float] | None = None, *, main_key: str = "main") -> None:
        super().__init__()
        self.base = base
        self.main_key = main_key
        self.aux_weights = {str(k): float(v) for k, v in (aux_weights or {}).items()}
        if main_key in self.aux_weights:
            raise ValueError(f"aux_weights must not contain the main output {main_key!r}")
        bad = {k: v for k, v in self.aux_weights.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"aux_weights must be finite and >= 0, got {bad}")

    @property
    def requires_weight_map(self) -> bool:
        return bool(getattr(self.base, "requires_weight_map", False))

    def forward(self, outputs: Mapping[str, torch.Tensor] | torch.Tensor, target: torch.Tensor,
                **kwargs: Any) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            if self.aux_weights:
                raise ValueError(
                    f"expected a dict of outputs with keys {[self.main_key, *self.aux_weights]}, got a single tensor"
                )
            outputs = {self.main_key: outputs}
        expected = {self.main_key, *self.aux_weights}
        missing = sorted(expected - set(outputs))
        extra = sorted(set(outputs) - expected)
        if missing or extra:
            raise ValueError(
                f"network outputs {sorted(outputs)} do not match the loss heads {sorted(expected)}: "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"no weight for {extra} (add them to aux_weights, weight 0 to skip)" if extra else "")
            )
        total = self.base(outputs[self.main_key], target, **kwargs)
        for name, weight in self.aux_weights.items():
            if weight:
                total = total + weight * self.base(outputs[name], target, **kwargs)
        return total

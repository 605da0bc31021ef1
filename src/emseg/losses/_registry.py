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
import torch.nn.functional as F
from monai.losses import DiceLoss as _MonaiDiceLoss
from monai.losses import FocalLoss as _MonaiFocalLoss
from torch import nn

from emseg._registry import Registry, suggest
from emseg.constants import IGNORE_INDEX

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


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> None:
    if logits.ndim not in (4, 5):
        raise ValueError(
            f"logits must be (N, C, Y, X) or (N, C, Z, Y, X), got shape {tuple(logits.shape)}"
        )
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} channels but the loss was built for {num_classes} classes")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target must have shape {expected} (logits {tuple(logits.shape)} without the class axis), "
            f"got {tuple(target.shape)}"
        )
    if target.is_floating_point():
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")


def _zero(logits: torch.Tensor) -> torch.Tensor:
    """A 0 that keeps the graph (so ``backward()`` works on an all-unlabelled batch)."""
    return logits.float().sum() * 0.0


def _per_class(values: Sequence[float] | torch.Tensor | None, num_classes: int, *, name: str,
               option: str) -> torch.Tensor | None:
    if values is None:
        return None
    tensor = torch.as_tensor(values, dtype=torch.float32).flatten()
    if tensor.numel() != num_classes:
        raise ValueError(f"loss {name!r}: {option} has {tensor.numel()} values but there are {num_classes} classes")
    if not torch.isfinite(tensor).all() or (tensor < 0).any():
        raise ValueError(f"loss {name!r}: {option} must be finite and >= 0, got {tensor.tolist()}")
    if tensor.sum() <= 0:
        raise ValueError(f"loss {name!r}: {option} must not all be 0, got {tensor.tolist()}")
    return tensor


class CrossEntropyLoss(nn.Module):
    """Cross-entropy averaged over labelled pixels, optionally class-weighted.

    With ``class_weights`` ``w`` this is torch's weighted mean
    ``sum_x w[y_x] * CE_x / sum_x w[y_x]`` over labelled pixels ``x``.

    Args:
        num_classes: number of classes ``C``.
        class_weights: optional ``(C,)`` non-negative weights.
    """

    def __init__(self, *, num_classes: int, class_weights: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("class_weights", _per_class(class_weights, num_classes, name="ce", option="class_weights"))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
        _check_inputs(logits, target, self.num_classes)
        target = target.long()
        valid = target != IGNORE_INDEX
        if self.class_weights is None:
            if not valid.any():
                return _zero(logits)
        elif not (self.class_weights[target[valid]].sum() > 0):
            return _zero(logits)
        return F.cross_entropy(logits.float(), target, weight=self.class_weights, ignore_index=IGNORE_INDEX)


class WeightedCrossEntropyLoss(nn.Module):
    """Cross-entropy weighted per voxel by a weight map (Ronneberger 2015, Guay 2021).

    ``sum_x W_x * CE_x / n`` over the ``n`` labelled pixels ``x``: the weights
    scale the loss (a map of all ones gives the plain mean cross-entropy).  This
    equals TensorFlow's ``SUM_BY_NONZERO_WEIGHTS`` reduction used by Guay et al.
    whenever ``W > 0`` on every labelled pixel.  ``W`` at unlabelled pixels is
    never read.

    Call as ``loss(logits, target, weight_map=W)`` with ``W`` shaped like ``target``
    (see :func:`emseg.data.guay_weight_map`, :func:`emseg.data.unet_border_weight_map`).
    """

    requires_weight_map = True

    def __init__(self, *, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
        _check_inputs(logits, target, self.num_classes)
        if weight_map is None:
            raise ValueError(
                "loss 'weighted_ce' needs a per-voxel weight map: call loss(logits, target, weight_map=W) "
                "with W shaped like target (configure training.weight_map)"
            )
        if tuple(weight_map.shape) != tuple(target.shape):
            raise ValueError(f"weight_map must have the target's shape {tuple(target.shape)}, got {tuple(weight_map.shape)}")
        target = target.long()
        valid = target != IGNORE_INDEX
        n = valid.sum()
        if n == 0:
            return _zero(logits)
        ce = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
        weighted = torch.where(valid, ce * weight_map.to(ce.dtype), torch.zeros_like(ce))
        return weighted.sum() / n


class FocalLoss(nn.Module):
    """Multi-class (softmax) focal loss, averaged over labelled pixels.

    ``FL_x = -alpha[y_x] * (1 - p_x)**gamma * log(p_x)`` with ``p_x`` the softmax
    probability of the true class ``y_x``; the loss is the mean of ``FL_x`` over
    labelled pixels (a plain mean: not divided by the sum of ``alpha``).

    Multi-class alpha convention (MONAI's, the direct generalisation of Lin et
    al.'s binary alpha): a scalar ``alpha`` gives class 0 (background) the
    factor ``1 - alpha`` and every other class ``alpha``; for two classes this is
    RetinaNet's convention with class 1 as the positive class.  A list gives one
    factor per class.  ``alpha=None`` means no factor (all 1).  With ``gamma=0``
    the loss is the mean over labelled pixels of ``alpha[y_x] * CE_x``.

    Implementation: MONAI's ``FocalLoss`` (``use_softmax=True``) with its
    ``ignore_index``: it zeroes ignored pixels and divides by the number of
    labelled pixels, which the tests check.

    Args:
        num_classes: number of classes ``C``.
        alpha: scalar in ``[0, 1]``, ``(C,)`` non-negative factors, or ``None``. Default 0.25.
        gamma: focusing exponent ``>= 0``. Default 2.
    """

    def __init__(self, *, num_classes: int, alpha: float | Sequence[float] | None = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"loss 'focal': gamma must be a number >= 0, got {gamma!r}")
        monai_alpha: float | list[float] | None
        if alpha is None:
            monai_alpha = None
        elif isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"loss 'focal': a scalar alpha must be in [0, 1], got {alpha!r}")
            monai_alpha = float(alpha)
        else:
            monai_alpha = _per_class(alpha, num_classes, name="focal", option="alpha").tolist()  # type: ignore[union-attr]
        self.alpha, self.gamma = monai_alpha, float(gamma)
        self._focal = _MonaiFocalLoss(include_background=True, to_onehot_y=True, gamma=float(gamma), alpha=monai_alpha,
                                      use_softmax=True, ignore_index=IGNORE_INDEX, reduction="mean")

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
        _check_inputs(logits, target, self.num_classes)
        if not (target != IGNORE_INDEX).any():
            return _zero(logits)
        return self._focal(logits.float(), target.long().unsqueeze(1))


class _SoftOverlap(nn.Module):
    """Per-class soft Dice or Jaccard over labelled pixels, from MONAI's ``DiceLoss``.

    MONAI's ``DiceLoss`` (softmax, ``to_onehot_y``, ``ignore_index``) multiplies
    probabilities and one-hot targets by the labelled-pixel mask *after* the
    softmax, so ignored pixels add nothing to ``sum p``, ``sum g`` or ``sum p*g``
    (the tests check this).  Sums run over the batch and all spatial axes
    (``batch=True``), as in :class:`~emseg.training.DiceCELoss`.
    """

    _name = ""
    _jaccard = False

    def __init__(self, *, num_classes: int, class_weights: Sequence[float] | torch.Tensor | None = None,
                 smooth: float = 1e-5) -> None:
        super().__init__()
        self.num_classes = num_classes
        if not (isinstance(smooth, (int, float)) and smooth > 0):
            raise ValueError(f"loss {self._name!r}: smooth must be > 0, got {smooth!r}")
        weights = _per_class(class_weights, num_classes, name=self._name, option="class_weights")
        self.register_buffer("class_weights", torch.ones(num_classes) if weights is None else weights)
        self._overlap = _MonaiDiceLoss(include_background=True, to_onehot_y=True, softmax=True, batch=True,
                                       jaccard=self._jaccard, smooth_nr=float(smooth), smooth_dr=float(smooth),
                                       ignore_index=IGNORE_INDEX, reduction="none")

    def scores(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-class soft Dice (or IoU) ``(C,)`` over the labelled pixels of the batch."""
        _check_inputs(logits, target, self.num_classes)
        return 1.0 - self._overlap(logits.float(), target.long().unsqueeze(1)).flatten()


class SoftDiceLoss(_SoftOverlap):
    """Soft Dice loss with per-class weights: ``1 - sum_i a_i Dice_i / sum_i a_i``.

    ``Dice_i = (2 sum p_i g_i + s) / (sum p_i + sum g_i + s)`` over the labelled
    pixels of the whole batch (``p`` softmax probabilities, ``g`` one-hot
    targets, ``s = smooth``).  Per-class weights ``a_i`` (Meyer et al.'s
    ``alpha_i``) are normalised to sum to 1, so the loss is 0 for a perfect
    prediction and, with equal weights, ``1 - mean_i Dice_i``; equivalently
    ``1 - mean_i(a'_i Dice_i)`` with ``a'_i = C a_i / sum_j a_j`` (mean 1).
    A class absent from both target and prediction has ``Dice = s/s = 1``; one
    absent from the target but predicted has ``Dice ~ 0``.

    Args:
        num_classes: number of classes ``C``.
        class_weights: optional ``(C,)`` non-negative weights ``a_i`` (default all 1).
        smooth: ``s`` (default 1e-5, as in MONAI).
    """

    _name = "dice"

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
        dice = self.scores(logits, target)
        if not (target != IGNORE_INDEX).any():
            return _zero(logits)
        w = self.class_weights.to(dice)
        return 1.0 - (w * dice).sum() / w.sum()


class JaccardLogLoss(_SoftOverlap):
    """``-log`` of the soft Jaccard index (IoU), averaged over classes.

    ``IoU_i = (2 I_i + s) / (2 (P_i + G_i - I_i) + s)`` with ``I_i = sum p_i g_i``,
    ``P_i = sum p_i``, ``G_i = sum g_i`` over the labelled pixels of the batch
    (MONAI's ``jaccard=True`` form, ``~ I / (P + G - I)``); the loss is
    ``sum_i a_i (-log IoU_i) / sum_i a_i`` (``a_i`` as in :class:`SoftDiceLoss`,
    default all 1).  It is 0 for a perfect prediction and grows without bound
    as an IoU goes to 0 (clamped at ``IoU >= 1e-7``).

    Args:
        num_classes: number of classes ``C``.
        class_weights: optional ``(C,)`` non-negative weights (default all 1).
        smooth: ``s`` (default 1e-5).
    """

    _name = "jaccard_log"
    _jaccard = True

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
        iou = self.scores(logits, target)
        if not (target != IGNORE_INDEX).any():
            return _zero(logits)
        w = self.class_weights.to(iou)
        return (w * -torch.log(iou.clamp_min(1e-7))).sum() / w.sum()


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

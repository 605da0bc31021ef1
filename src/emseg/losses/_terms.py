"""The named loss terms (cross-entropy, weighted cross-entropy, focal, soft Dice, Jaccard log), each called as
``loss(logits, target, weight_map=None)``; unlabelled pixels (``IGNORE_INDEX``) never contribute (see
:mod:`emseg.losses._registry` for the contract and the registry)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss as _MonaiDiceLoss
from monai.losses import FocalLoss as _MonaiFocalLoss
from torch import nn

from emseg.constants import IGNORE_INDEX

__all__ = ["CrossEntropyLoss", "FocalLoss", "JaccardLogLoss", "SoftDiceLoss", "WeightedCrossEntropyLoss"]


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

"""Dice + cross-entropy loss that ignores unlabelled pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss
from torch import nn

from emseg.constants import IGNORE_INDEX

__all__ = ["DiceCELoss"]


class DiceCELoss(nn.Module):
    """``ce_weight * CE + dice_weight * (1 - soft Dice)``, ignoring unlabelled pixels.

    MONAI's ``DiceCELoss`` has no ignore index, so the Dice part is MONAI's
    ``MaskedDiceLoss`` (mask = labelled pixels) and the cross-entropy part is
    torch's with ``ignore_index``.

    Args:
        class_weights: optional ``(C,)`` weights for the cross-entropy term.
        dice_weight, ce_weight: weights of the two terms.

    Call with logits ``(N, C, *spatial)`` and labels ``(N, *spatial)`` int64,
    :data:`~emseg.data.IGNORE_INDEX` for unlabelled pixels.
    """

    def __init__(self, *, class_weights: torch.Tensor | None = None, dice_weight: float = 1.0, ce_weight: float = 1.0):
        super().__init__()
        self.register_buffer("class_weights", class_weights if class_weights is not None else None)
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.dice = MaskedDiceLoss(softmax=True, include_background=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        loss = logits.new_zeros(())
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(
                logits, target, weight=self.class_weights, ignore_index=IGNORE_INDEX
            )
        if self.dice_weight:
            valid = target != IGNORE_INDEX
            onehot = F.one_hot(torch.where(valid, target, 0), logits.shape[1]).movedim(-1, 1).float()
            loss = loss + self.dice_weight * self.dice(logits, onehot, mask=valid.unsqueeze(1).float())
        return loss

"""Losses: the registry of named losses, Dice + cross-entropy, and the training criterion built from a config.

Each named loss is an entry of :data:`LOSSES` (``LOSSES.get("focal")``); add one
there with ``LOSSES.register(name, cls)``.

Below ``config`` in the layers (as MONAI's ``monai.losses``), so a configuration
checks its loss names and options without importing ``emseg.training``.

>>> from emseg.losses import LOSSES, build_loss
>>> sorted(LOSSES.names())[:2]                                   # doctest: +SKIP
>>> loss = build_loss({"dice": 1, "ce": 1}, num_classes=3)       # doctest: +SKIP
"""

from emseg.losses._criterion import (
    AUTO_OPTIONS,
    DEFAULT_AUX_WEIGHTS,
    build_criterion,
    loss_spec,
    multi_head,
    resolve_auto,
)
from emseg.losses._dice_ce import DiceCELoss
from emseg.losses._registry import LOSSES, MultiHeadLoss, WeightedSumLoss, build_loss

__all__ = [
    "AUTO_OPTIONS",
    "DEFAULT_AUX_WEIGHTS",
    "LOSSES",
    "DiceCELoss",
    "MultiHeadLoss",
    "WeightedSumLoss",
    "build_criterion",
    "build_loss",
    "loss_spec",
    "multi_head",
    "resolve_auto",
]

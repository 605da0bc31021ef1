"""Exponential moving average (EMA) of a network's weights during training.

The averaged copy is what validation scores and what the checkpoint keeps; the
optimiser keeps stepping the raw weights. Floating-point buffers (batch-norm
running statistics) are averaged like the parameters; integer buffers (batch
counters) are copied. The decay is warmed up as ``min(decay, (1 + n) / (10 + n))``
after ``n`` updates, so that early averages are not dominated by the random
initial weights in short runs.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """EMA of ``model``'s state: ``avg <- d * avg + (1 - d) * current`` after each optimiser step.

    >>> net = nn.Linear(1, 1, bias=False)
    >>> _ = net.weight.data.fill_(0.0)
    >>> ema = WeightAverage(net, decay=0.5)
    >>> _ = net.weight.data.fill_(1.0)
    >>> ema.update(net)                 # d = min(0.5, 1/10) = 0.1: 0.1 * 0 + 0.9 * 1
    >>> round(ema.model.weight.item(), 6)
    0.9
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"training.ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for avg, cur in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if avg.dtype.is_floating_point:
                avg.lerp_(cur.detach().to(avg.dtype), 1.0 - d)  # avg + (1 - d) * (cur - avg)
            else:
                avg.copy_(cur)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "decay": self.decay}

    def load(self, weights: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        """Restore the averaged weights and the update count of a ``last.pt``."""
        self.model.load_state_dict(weights)
        self.updates = int(info["updates"])

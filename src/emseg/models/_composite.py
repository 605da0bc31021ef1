"""Networks composed around registry networks: calibration offsets, fixed-weight ensembles.

This is the network an export writes and the one prediction from an exported file runs (emseg.export
builds it from a checkpoint, emseg.inference rebuilds it from the export's metadata), so it lives below both.
Either module maps the *normalised* input ``(N, C, Y, X)`` (3-D: ``(N, 1, Z, Y, X)``) to ``(N, K, ...)``
"logits" whose softmax is emseg's probability.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from emseg.models._registry import build_model

__all__ = ["EnsembleNetwork", "SingleNetwork", "network_from_metadata", "skeleton"]

#: Floor of the ensemble's probabilities before the logarithm (log 1e-30 = -69: far below any real logit gap).
_PROB_FLOOR = 1e-30
_DELEGATED = ("output_margin", "alignment", "output_size", "valid_input_size", "spatial_dims")


class SingleNetwork(nn.Module):
    """A registry network plus its calibration offsets: ``(N, C, ...)`` -> ``(N, K, ...)`` logits."""

    def __init__(self, net: nn.Module, num_classes: int, offsets: list[float] | None = None) -> None:
        super().__init__()
        self.net = net
        # always present (zeros when uncalibrated: adding 0.0 changes no bit), so every export has one layout
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.float32) if offsets
                             else torch.zeros(num_classes, dtype=torch.float32))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _DELEGATED:  # what the Predictor asks of the network (valid padding, 3-D)
                return getattr(self._modules["net"], name)
            raise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y + self.offsets.view((1, -1) + (1,) * (y.ndim - 2))


class EnsembleNetwork(nn.Module):
    """Members' probabilities combined with fixed weights, returned as log-probabilities.

    Args:
        members: one :class:`SingleNetwork` per member.
        weights: ``(M,)`` non-negative, summing to 1.
        scales, shifts: per member, ``x_member = x * scale + shift`` turns the ensemble's normalised input
            into the member's (its own mean/std).
        channels: per member, ``(start, stop)`` of the input channels it takes (its centred context slices).
    """

    def __init__(self, members: list[nn.Module], *, weights: list[float], scales: list[float], shifts: list[float],
                 channels: list[tuple[int, int]]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32))
        self.register_buffer("shifts", torch.tensor(shifts, dtype=torch.float32))
        self.channels = [(int(a), int(b)) for a, b in channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(1, dtype=x.dtype, device=x.device)
        for i, member in enumerate(self.members):
            start, stop = self.channels[i]
            xi = x[:, start:stop] * self.scales[i] + self.shifts[i]
            total = total + self.weights[i] * torch.softmax(member(xi), dim=1)
        return torch.log(torch.clamp(total, min=_PROB_FLOOR))


def skeleton(model: dict[str, Any], num_classes: int) -> nn.Module:
    """The registry network of an export's ``model`` entry built on the meta device (no weights): its shape
    helpers (``output_margin``, ``valid_input_size``, ...) without its arithmetic."""
    with torch.device("meta"):
        return build_model(model["name"], in_channels=int(model["in_channels"]), num_classes=num_classes,
                           options=model["options"], pretrained=False)


def network_from_metadata(meta: dict[str, Any]) -> nn.Module:
    """The exported module's structure from its metadata (weights and buffers zero-initialised or random):
    load the export's state dict into it (``torch.load(..., weights_only=True)``)."""
    num_classes = len(meta["classes"])
    nets = [SingleNetwork(build_model(m["name"], in_channels=int(m["in_channels"]), num_classes=num_classes,
                                      options=m["options"], pretrained=False), num_classes)
            for m in meta["models"]]
    if meta.get("kind") != "ensemble":
        return nets[0].eval()
    m = len(nets)
    return EnsembleNetwork(nets, weights=[1.0 / m] * m, scales=[1.0] * m, shifts=[0.0] * m,
                           channels=[tuple(c) for c in meta["channels"]]).eval()

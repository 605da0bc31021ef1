"""Parameter and FLOP counts of registered networks, for ``emseg models``.

Convention: one multiply-add is 2 FLOPs.  Counted, per layer, from the
shapes seen by forward hooks:

* convolution (any dimension): ``2 * output elements * (C_in / groups) * prod(kernel)``;
* transposed convolution: ``2 * input elements * (C_out / groups) * prod(kernel)``;
* linear: ``2 * output elements * in_features``;
* batch / instance / group norm (folded to a scale and a shift at
  inference): ``2 * elements``.

Biases, activations, pooling, upsampling, concatenation and additions are not
counted (a few percent at most).  ``torch.utils.flop_counter.FlopCounterMode``
agrees on convolutions (tested) but leaves out the norms; the hooks here run
on the ``meta`` device, so no weights are allocated and no arithmetic is done:
the whole 2-D registry is counted in a few seconds on a laptop CPU (building
the same models for real takes longer than that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ModelCost", "count_flops", "model_cost"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def _layer_flops(module: nn.Module, inputs: tuple, output) -> int:
    x = inputs[0] if inputs else None
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return 2 * x.numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.modules.conv._ConvNd):
        return 2 * output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return 2 * output.numel() * module.in_features
    if isinstance(module, _NORMS):
        return 2 * output.numel()
    return 0


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of ``model`` on an input of ``input_shape`` ``(N, C, *spatial)``.

    The model and input may be on any device; ``meta`` is the cheap one.
    """
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += _layer_flops(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, *_NORMS))]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


@dataclass(frozen=True)
class ModelCost:
    """Size and cost of a registered network with default options."""

    name: str
    parameters: int
    flops: int
    window: tuple[int, ...]


def default_window(spec) -> tuple[int, ...]:
    """The spatial window FLOPs are quoted for: ``spec.flops_window``, else 512x512 (2D) or 5x256x256 (3D)."""
    window = getattr(spec, "flops_window", None)
    if window is not None:
        return tuple(window)
    return (512, 512) if spec.spatial_dims == 2 else (5, 256, 256)


def model_cost(name: str, *, in_channels: int = 1, num_classes: int = 7, options: dict | None = None) -> ModelCost:
    """Parameters and FLOPs per window (see :func:`default_window`) of a registered torch model.

    The model is built on the ``meta`` device (no weights are allocated, no
    pretrained weights are read), so this is fast even for large networks.
    """
    from emseg.models._registry import MODELS, build_model

    spec = MODELS.get(name)
    window = default_window(spec)
    with torch.device("meta"):
        model = build_model(name, in_channels=in_channels, num_classes=num_classes, options=options, pretrained=False)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelCost(name, params, count_flops(model, (1, in_channels, *window)), window)

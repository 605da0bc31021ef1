"""Where Grad-CAM looks: the network behind a predictor and the layer (by name, or its bottleneck)."""

from __future__ import annotations

import logging
from typing import Any

from emseg.inference import Predictor

logger = logging.getLogger(__name__)

__all__ = ["BOTTLENECK", "bottleneck_layer", "resolve_layer"]

BOTTLENECK = "bottleneck"


def _torch_model(predictor_or_model: Any):
    """``(torch module, predictor or None)``; a clear error for models without gradients."""
    import torch

    if isinstance(predictor_or_model, Predictor):
        if not predictor_or_model.is_torch:
            raise ValueError(
                f"Grad-CAM needs gradients, but this model is a {type(predictor_or_model.model).__name__} "
                "(random forest), which has none; explain a neural network (e.g. a unet2d run) instead"
            )
        return predictor_or_model.model, predictor_or_model
    if isinstance(predictor_or_model, torch.nn.Module):
        return predictor_or_model, None
    raise ValueError(
        f"Grad-CAM needs gradients, but got a {type(predictor_or_model).__name__}; pass a Predictor of a "
        "neural network or a torch.nn.Module (random forests have no gradients)"
    )


def bottleneck_layer(model: Any) -> str:
    """Name (in ``model.named_modules()``) of the encoder bottleneck of ``model``.

    Looked up in this order:

    1. ``model.gradcam_layer``: a network declares its own layer by a class
       attribute or property holding a module name, e.g. ``"encoder.layer4"``;
    2. ``model.encoders``: a list of encoder blocks, deepest last (as in
       :class:`emseg.models.UNet`) -> ``"encoders.<last>"``.

    Raises:
        ValueError: the model declares neither; the message lists the names
            that ``layer=`` accepts instead.
    """
    import torch

    declared = getattr(model, "gradcam_layer", None)
    if declared is not None:
        if not isinstance(declared, str):
            raise ValueError(f"{type(model).__name__}.gradcam_layer must be a module name (str), got {declared!r}")
        return declared
    encoders = getattr(model, "encoders", None)
    if isinstance(encoders, (torch.nn.ModuleList, torch.nn.Sequential)) and len(encoders) > 0:
        return f"encoders.{len(encoders) - 1}"
    raise ValueError(
        f"model {type(model).__name__} declares no bottleneck (no 'gradcam_layer' attribute, no 'encoders' "
        f"list); pass layer= / --layer with one of: {', '.join(_module_names(model))}"
    )


def _module_names(model) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: Any, layer: str = BOTTLENECK) -> tuple[str, Any]:
    """``(name, module)`` for ``layer``: ``"bottleneck"`` or a name from ``model.named_modules()``.

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    model, _ = _torch_model(model)
    name = bottleneck_layer(model) if layer == BOTTLENECK else layer
    modules = dict(model.named_modules())
    if not name or name not in modules:
        what = f"layer {name!r}"
        if layer == BOTTLENECK:
            what = f"bottleneck layer {name!r} declared by {type(model).__name__}"
        raise ValueError(
            f"{what} is not a module of {type(model).__name__}; use '{BOTTLENECK}' or one of: "
            f"{', '.join(_module_names(model))}"
        )
    return name, modules[name]



"""The model registry: every network (and the random-forest baseline) by name.

A new architecture is one new module plus one ``MODELS.register(...)`` line in
``emseg/models/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from emseg._registry import Registry

__all__ = ["MODELS", "ModelSpec", "ModelOptions", "build_model", "load_pretrained", "validate_model_options"]

# False while a model is rebuilt from a checkpoint (its weights follow) or on the meta device:
# builders then skip reading pretrained / ``encoder_weights`` files.
_LOAD_PRETRAINED: ContextVar[bool] = ContextVar("emseg_load_pretrained", default=True)


class ModelOptions(BaseModel):
    """Base class of a model's options; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry.

    ``builder(in_channels, num_classes, options)`` returns a ``torch.nn.Module``
    mapping ``(N, C, *spatial)`` to ``(N, num_classes, *spatial)`` logits
    (``spatial_dims`` spatial axes), or, for ``backend="random-forest"``, an
    untrained :class:`~emseg.models.RandomForestSegmenter`.

    ``default_patch``: the training / prediction window ``(z, y, x)`` of a 3-D
    model when the configuration gives none.  ``valid_padding``: the network
    uses unpadded convolutions, so its output is smaller than its input by
    ``model.output_margin`` pixels per side (training crops the labels,
    prediction tiles accordingly).
    """

    name: str
    description: str
    options: type[ModelOptions]
    builder: Callable[[int, int, Any], Any]
    backend: Literal["torch", "random-forest"] = "torch"
    spatial_dims: int = 2
    default_patch: tuple[int, ...] | None = None
    valid_padding: bool = False
    flops_window: tuple[int, ...] | None = None  # window `emseg models` quotes FLOPs for; None: 512x512 / 5x256x256


MODELS: Registry[ModelSpec] = Registry("model")


def validate_model_options(name: str, options: dict[str, Any]) -> ModelOptions:
    """Validate ``options`` for model ``name``; errors name the key and the model."""
    spec = MODELS.get(name)
    try:
        return spec.options(**options)
    except ValidationError as err:
        problems = "; ".join(
            f"model.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        allowed = ", ".join(["name", *spec.options.model_fields])
        raise ValueError(f"invalid options for model {name!r}: {problems}. Allowed keys: {allowed}") from None


def load_pretrained() -> bool:
    """Whether a builder should read pretrained weights now (see ``build_model(pretrained=...)``)."""
    return _LOAD_PRETRAINED.get()


def build_model(name: str, *, in_channels: int, num_classes: int, options: dict[str, Any] | None = None,
                pretrained: bool = True):
    """Build a registered model from its name and (validated) options.

    ``pretrained=False`` skips reading pretrained weights (``encoder_weights``,
    the lite0 ImageNet weights): for rebuilding a model whose trained weights
    are loaded next, e.g. from a checkpoint.
    """
    spec = MODELS.get(name)
    opts = validate_model_options(name, options or {})
    token = _LOAD_PRETRAINED.set(pretrained)
    try:
        return spec.builder(in_channels, num_classes, opts)
    finally:
        _LOAD_PRETRAINED.reset(token)

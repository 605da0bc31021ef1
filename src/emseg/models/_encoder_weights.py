"""Pretrained encoder weights: read a weight file safely, adapt the first convolution to the input channels,
load by name (classification heads left out)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["adapt_first_conv", "load_encoder_weights"]


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a first-convolution weight ``(O, 3, *k)`` from RGB to ``in_channels``.

    * 1 channel (grey EM): the sum of the RGB filters, so a grey image ``g``
      gives the response the RGB image ``(g, g, g)`` gave;
    * 3 channels: unchanged;
    * otherwise (e.g. 5 context slices): the RGB filters repeated over the
      channels and scaled by ``3 / in_channels`` (timm's convention), which
      keeps the response to a constant image.
    """
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, reps, *([1] * (weight.ndim - 2)))[:, :in_channels] * (weight.shape[1] / in_channels)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ValueError(f"encoder_weights: file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"encoder_weights {path}: reading .safetensors needs the 'safetensors' package "
                             "(pip install safetensors), or save the state dict with torch.save") from None
        return load_file(str(path), device="cpu")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - anything that is not a plain tensor file
        raise ValueError(f"encoder_weights {path} could not be read with torch.load(weights_only=True) "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); save a plain "
                         "state dict (name -> tensor)") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"encoder_weights {path} does not hold a state dict (a mapping of names to tensors)")
    return dict(data)


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a local state dict into ``encoder``, checking every key and shape.

    Accepts ``torch.save``'d state dicts (read with ``weights_only=True``;
    a ``{"state_dict": ...}`` wrapper is unwrapped) and ``.safetensors`` files.
    Keys under the encoder's ``head_prefixes`` (classification heads) are
    ignored.  A 3-channel first convolution is adapted to the encoder's input
    channels by :func:`adapt_first_conv`.

    Returns:
        The state dict as loaded (after dropping head keys and adapting).

    Raises:
        ValueError: naming the file and every missing key, unexpected key and
            shape mismatch (with both shapes).
    """
    path = Path(path)
    loaded = _read_state_dict(path)
    heads = tuple(getattr(encoder, "head_prefixes", ()))
    dropped = [k for k in loaded if heads and k.startswith(heads)]
    for k in dropped:
        del loaded[k]
    if dropped:
        logger.info("encoder_weights %s: ignoring %d classification-head tensors (%s...)", path, len(dropped),
                    dropped[0])
    own = encoder.state_dict()
    first = getattr(encoder, "first_conv", None)
    if first in loaded and first in own and loaded[first].shape != own[first].shape:
        w, target = loaded[first], own[first]
        if w.ndim == target.ndim and w.shape[0] == target.shape[0] and w.shape[2:] == target.shape[2:] \
                and w.shape[1] == 3:
            loaded[first] = adapt_first_conv(w, target.shape[1])
            logger.info("encoder_weights %s: adapted %s from 3 to %d input channels", path, first, target.shape[1])
    missing = [k for k in own if k not in loaded]
    unexpected = [k for k in loaded if k not in own]
    shapes = [f"{k}: file {tuple(loaded[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in loaded and loaded[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:10])}"
                         f"{' ...' if len(unexpected) > 10 else ''}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:10])}{' ...' if len(shapes) > 10 else ''}")
        raise ValueError(f"encoder_weights {path} do not fit the {type(encoder).__name__}: " + "; ".join(parts))
    encoder.load_state_dict(loaded)
    logger.info("encoder_weights: loaded %d tensors from %s", len(loaded), path)
    return loaded


"""Grad-CAM for segmentation networks: which features made the model call a class.

Grad-CAM (Selvaraju et al. 2017), adapted to segmentation as in WAE-Net and
"Seg-Grad-CAM" (Vinogradova et al. 2020): the target is a class's logit
summed over a set of pixels (the pixels the model predicts as that class, or a
user mask), not a single image-level score.  Activations ``A`` and gradients
``dS/dA`` are taken at one layer (the encoder bottleneck by default); the
weights are the spatial means of the gradients per channel and the map is
``ReLU(sum_c w_c A_c)``, upsampled bilinearly to the slice and scaled to
``[0, 1]``.

MONAI's :class:`monai.visualize.GradCAM` is not used: it is written for
classification networks.  Its target is ``logits[:, class_idx].squeeze()``
(for a segmentation output that is the class logit summed over *every* pixel,
with no way to restrict it to predicted pixels or a mask), its default
``class_idx`` is the argmax over the channel axis (a per-pixel map for
segmentation, which it then uses as an index), it resolves the layer only by
name with no "bottleneck" notion, and it rescales the map itself so the raw
maximum is lost.  The hook-based implementation here is short and keeps those
under our control.

A network tells Grad-CAM where its bottleneck is by a ``gradcam_layer``
attribute (a name from ``model.named_modules()``); networks with an
``encoders`` list (:class:`emseg.models.UNet`) default to the last encoder.

The network input is built as in prediction: normalised, with the
grain-filter channels of models trained with ``preprocess.grain_filter``
(:meth:`Predictor._input`). 3-D networks (``unet3d-*``, ``hybrid2d3d``) get a
``(Z, Y, X)`` sub-stack centred on the slice (their ``window_3d`` depth); the
target is on the centre slice, the weights are the means of the gradients
over the 3-D activation, and the map shown is the centre slice of the
trilinearly upsampled 3-D map.

Caveat for U-Nets: the skip connections can carry most of the decision, so
the bottleneck may contribute little (small ``raw_max``, little of the map on
the target, ``mass_in_target``).  The maps of a later layer, e.g. the last
decoder (``layer="decoders.<last>"``), are then the more faithful ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emseg.data import context_stack as _context_stack
from emseg.ensemble import split_ensembles
from emseg.inference import Predictor
from emseg.io import atomic_output, open_image, read_image, write_image

logger = logging.getLogger(__name__)

__all__ = [
    "GradCamResult",
    "bottleneck_layer",
    "compute_grad_cam",
    "explain",
    "grad_cam",
    "render_overlay",
    "resolve_layer",
    "save_overlay",
]

BOTTLENECK = "bottleneck"
SUMMARY_FILENAME = "gradcam_summary.json"
ARRAY_FORMATS = ("npy", "tif")
COLORMAPS = ("inferno", "jet")


@dataclass
class GradCamResult:
    """One Grad-CAM map and what it was computed from.

    Attributes:
        cam: ``(Y, X)`` float32 map scaled to ``[0, 1]`` (all zeros when the
            target is empty or no channel supports the class).
        raw_max: maximum of the map before scaling (units of activation x
            gradient); compare it between classes or models, not ``cam``.
        class_name: the explained class.
        layer: the module name the activations were taken from.
        target: ``"prediction"`` (pixels predicted as the class) or ``"mask"``.
        target_pixels: number of pixels in the target.
        score: the target score ``S``: the class logit summed over the target.
        mass_in_target: fraction of the map's sum that lies on target pixels.
    """

    cam: np.ndarray
    raw_max: float
    class_name: str
    layer: str
    target: str
    target_pixels: int
    score: float
    mass_in_target: float

    def summary(self) -> dict[str, Any]:
        """The scalar fields, for JSON."""
        return {"layer": self.layer, "target": self.target, "target_pixels": self.target_pixels,
                "score": self.score, "raw_max": self.raw_max, "mass_in_target": self.mass_in_target}


# --------------------------------------------------------------------------- layers


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


# --------------------------------------------------------------------------- Grad-CAM


def _class_index(class_name: str | int, classes: list[str] | None) -> tuple[int, str]:
    if classes is not None:
        if isinstance(class_name, str):
            if class_name not in classes:
                raise ValueError(f"class {class_name!r} is not one of the model's classes: {', '.join(classes)}")
            return classes.index(class_name), class_name
        if isinstance(class_name, (int, np.integer)) and 0 <= int(class_name) < len(classes):
            return int(class_name), classes[int(class_name)]
        raise ValueError(
            f"class {class_name!r}: expected a name from {', '.join(classes)} or an index 0-{len(classes) - 1}"
        )
    if isinstance(class_name, (int, np.integer)) and not isinstance(class_name, bool) and int(class_name) >= 0:
        return int(class_name), str(int(class_name))
    raise ValueError(
        f"class {class_name!r}: a bare torch model has no class names; pass the class index (int) "
        "or a Predictor (Predictor.from_checkpoint) to use names"
    )


def _divisor(model, predictor) -> tuple[int, int]:
    div = getattr(model, "divisor", None)
    if div is None:
        div = predictor.divisor if predictor is not None else 1
    div = (int(div),) * 2 if isinstance(div, (int, np.integer)) else tuple(int(d) for d in div)[-2:]
    return div  # type: ignore[return-value]


def _spatial_dims(model, predictor) -> int:
    if predictor is not None:
        return int(predictor.spatial_dims)
    return int(getattr(model, "spatial_dims", 2))


def _prepare_input(image: np.ndarray, predictor) -> np.ndarray:
    """Normalised ``(C, Y, X)`` float32: the network input of prediction, grain-filter channels included."""
    image = np.asarray(image)
    context = predictor.context_slices if predictor is not None else None
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be a (Y, X) slice or a (C, Y, X) context stack, got shape {image.shape}")
    if context is not None and context > 1 and (image.ndim != 3 or image.shape[0] != context):
        raise ValueError(
            f"this model takes {context} context slices: pass a ({context}, Y, X) stack centred on the slice "
            f"(explain() builds it from the volume), got shape {image.shape}"
        )
    if context == 1 and image.ndim == 3 and image.shape[0] != 1:
        raise ValueError(f"this model takes single (Y, X) slices, got shape {image.shape}")
    if predictor is None:
        x = np.asarray(image, dtype=np.float32)
        return x[None] if x.ndim == 2 else x
    if context == 1 and image.ndim == 3:
        image = image[0]
    return predictor._input(image)  # the same input as prediction: normalised, grain-filter channels appended


def _prepare_volume(stack: np.ndarray, predictor, centre: int | None) -> tuple[np.ndarray, int]:
    """Normalised ``(1, Z, Y, X)`` float32 input of a 3-D network and the index of the explained slice."""
    stack = np.asarray(stack)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"a 3-D model takes a (Z, Y, X) stack around the slice (or one (Y, X) slice), "
                         f"got shape {stack.shape}")
    centre = stack.shape[0] // 2 if centre is None else int(centre)
    if not 0 <= centre < stack.shape[0]:
        raise ValueError(f"centre slice {centre} is outside the stack of {stack.shape[0]} slices")
    x = predictor.normalizer(stack) if predictor is not None else np.asarray(stack, dtype=np.float32)
    return np.asarray(x, np.float32)[None], centre


def _divisor3(model, predictor) -> tuple[int, int, int]:
    div = getattr(model, "divisor", None)
    if div is None:
        div = 1
    div = (int(div),) * 3 if isinstance(div, (int, np.integer)) else tuple(int(d) for d in div)
    return (1,) * (3 - len(div)) + div[-3:]  # type: ignore[return-value]


def compute_grad_cam(
    predictor_or_model: Any,
    image2d: np.ndarray,
    *,
    class_name: str | int,
    layer: str = BOTTLENECK,
    mask: np.ndarray | None = None,
    centre: int | None = None,
) -> GradCamResult:
    """Grad-CAM map of one class on one slice, with the raw maximum and target size.

    Args:
        predictor_or_model: a :class:`~emseg.inference.Predictor` of a torch
            network (normalisation and class names come from it), or a bare
            ``torch.nn.Module`` mapping ``(1, C, Y, X)`` to ``(1, K, Y, X)``
            logits (the image is then used as given and ``class_name`` must
            be the class index).
        image2d: raw ``(Y, X)`` slice, or ``(C, Y, X)`` context stack for
            models with ``context_slices = C > 1``.  The whole slice is run at
            once (fine up to about 1024 x 1024), reflect-padded to the
            model's size divisor and cropped back.  3-D models take a raw
            ``(Z, Y, X)`` stack around the slice (padded by the network).
        class_name: class to explain (name, or index).
        layer: ``"bottleneck"`` (see :func:`bottleneck_layer`) or a module name
            from ``model.named_modules()``.
        mask: optional ``(Y, X)`` boolean target; default: the pixels whose
            argmax prediction is ``class_name``.
        centre: 3-D models: index in the stack of the explained slice
            (default: the middle one); ignored for 2-D models.

    Returns:
        :class:`GradCamResult`; ``cam`` is ``(Y, X)`` float32 in ``[0, 1]``
        (3-D models: the centre slice of the 3-D map).

    Raises:
        ValueError: random forest or other model without gradients, unknown
            class or layer (the message lists the valid ones), a layer that
            does not run exactly once or is not a feature map of the model's
            dimension, wrong image or mask shape, empty mask.
    """
    import torch
    import torch.nn.functional as F

    model, predictor = _torch_model(predictor_or_model)
    classes = predictor.classes if predictor is not None else None
    index, name = _class_index(class_name, classes)
    layer_name, module = resolve_layer(model, layer)
    dims = _spatial_dims(model, predictor)
    if dims == 3:
        x, centre = _prepare_volume(image2d, predictor, centre)
    else:
        x = _prepare_input(image2d, predictor)
    height, width = x.shape[-2:]
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (height, width):
            raise ValueError(f"mask has shape {mask.shape}; expected the slice's shape {(height, width)}")
        mask = mask != 0
        if not mask.any():
            raise ValueError("mask has no non-zero pixels: Grad-CAM needs at least one target pixel")

    if dims == 3:  # the 3-D networks pad at the end (edge values) to their divisor themselves
        padded = tuple(s + (-s) % d for s, d in zip(x.shape[1:], _divisor3(model, predictor)))
    else:
        dy, dx = _divisor(model, predictor)
        pad_y, pad_x = (-height) % dy, (-width) % dx
        if pad_y or pad_x:
            x = np.pad(x, ((0, 0), (0, pad_y), (0, pad_x)), mode="reflect")
        padded = tuple(x.shape[1:])

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    tensor = torch.from_numpy(np.ascontiguousarray(x))[None].to(device)

    captured: list[Any] = []
    handle = module.register_forward_hook(lambda _m, _inp, out: captured.append(out))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            tensor.requires_grad_(True)
            logits = model(tensor)
            if len(captured) != 1:
                raise ValueError(
                    f"layer {layer_name!r} ran {len(captured)} times in one forward pass; Grad-CAM needs a module "
                    "that runs exactly once (e.g. one encoder block, not a shared pooling layer)"
                )
            acts = captured[0]
            axes = "(N, C, Z, Y, X)" if dims == 3 else "(N, C, Y, X)"
            if not isinstance(acts, torch.Tensor) or acts.ndim != 2 + dims:
                kind = tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
                raise ValueError(f"layer {layer_name!r} outputs {kind}; Grad-CAM of this {dims}-D model needs a "
                                 f"{axes} feature map")
            if logits.ndim != 2 + dims or logits.shape[0] != 1:
                raise ValueError(f"model output has shape {tuple(logits.shape)}; expected (1, K, "
                                 f"{'Z, ' if dims == 3 else ''}Y, X) logits")
            if index >= logits.shape[1]:
                raise ValueError(f"class index {index} but the model has {logits.shape[1]} outputs")
            if dims == 3:
                logits = logits[:, :, centre]  # the explained slice
            logits = logits[:, :, :height, :width].float()
            if mask is None:
                target = (logits[0].detach().argmax(0) == index)
                target_kind = "prediction"
            else:
                target = torch.from_numpy(mask).to(logits.device)
                target_kind = "mask"
            score = logits[0, index][target].sum()
            if int(target.sum()) == 0 or not score.requires_grad:
                grads = torch.zeros_like(acts)
                if int(target.sum()) == 0:
                    logger.warning("no pixel is predicted as %r: its Grad-CAM map is empty (pass a mask to choose "
                                   "the target pixels)", name)
            else:
                (grads,) = torch.autograd.grad(score, acts, allow_unused=True)
                if grads is None:
                    raise ValueError(f"layer {layer_name!r} does not influence the model's output; choose another")
        with torch.no_grad():
            acts, grads = acts.detach().float(), grads.detach().float()
            spatial = tuple(range(2, acts.ndim))
            weights = grads.mean(dim=spatial, keepdim=True)
            cam = torch.relu((weights * acts).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=padded, mode="trilinear" if dims == 3 else "bilinear", align_corners=False)
            cam = cam[0, 0, centre] if dims == 3 else cam[0, 0]
            cam = cam[:height, :width].cpu().numpy().astype(np.float32)
    finally:
        handle.remove()
        model.train(was_training)

    raw_max = float(cam.max()) if cam.size else 0.0
    cam = (cam / raw_max).astype(np.float32) if raw_max > 0 else np.zeros_like(cam)
    total = float(cam.sum())
    target_np = target.cpu().numpy()
    in_target = float(cam[target_np].sum() / total) if total > 0 else 0.0
    return GradCamResult(cam=cam, raw_max=raw_max, class_name=name, layer=layer_name, target=target_kind,
                         target_pixels=int(target_np.sum()), score=float(score.detach()), mass_in_target=in_target)


def grad_cam(
    predictor_or_model: Any,
    image2d: np.ndarray,
    *,
    class_name: str | int,
    layer: str = BOTTLENECK,
    mask: np.ndarray | None = None,
    centre: int | None = None,
) -> np.ndarray:
    """Grad-CAM map ``(Y, X)`` float32 in ``[0, 1]`` of one class on one slice.

    Same arguments as :func:`compute_grad_cam`, which also returns the raw
    maximum, the target size and the share of the map on the target.

    >>> cam = grad_cam(predictor, raw[10], class_name="mitochondrion")   # doctest: +SKIP
    """
    return compute_grad_cam(predictor_or_model, image2d, class_name=class_name, layer=layer, mask=mask,
                            centre=centre).cam


# --------------------------------------------------------------------------- overlay

# matplotlib's "inferno" sampled at 0, 0.1, ..., 1 (perceptually uniform, prints in grey);
# interpolating 11 stops is within a few levels of the full table.
_INFERNO = np.array([
    [0, 0, 4], [22, 11, 57], [66, 10, 104], [106, 23, 110], [147, 38, 103], [188, 55, 84],
    [221, 81, 58], [243, 120, 25], [252, 165, 10], [246, 215, 70], [252, 255, 164],
], dtype=np.float32) / 255.0


def _colormap(values: np.ndarray, name: str) -> np.ndarray:
    """``(..., 3)`` float RGB in [0, 1] for values in [0, 1]."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    if name == "inferno":
        stops = np.linspace(0.0, 1.0, len(_INFERNO))
        return np.stack([np.interp(v, stops, _INFERNO[:, c]) for c in range(3)], axis=-1).astype(np.float32)
    if name == "jet":
        return np.stack([np.clip(1.5 - np.abs(4 * v - k), 0, 1) for k in (3, 2, 1)], axis=-1).astype(np.float32)
    raise ValueError(f"cmap {name!r}: expected one of {', '.join(COLORMAPS)}")


def _grey(image: np.ndarray) -> np.ndarray:
    """Raw EM slice to [0, 1] with a 0.5-99.5 % percentile stretch."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, (0.5, 99.5)) if image.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
    return np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(image)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, AttributeError):  # Pillow < 10.1 or no FreeType: fixed bitmap font
        return ImageFont.load_default()


def render_overlay(image: np.ndarray, cam: np.ndarray, *, title: str | None = None, cmap: str = "inferno",
                   alpha: float = 0.5) -> np.ndarray:
    """The figure :func:`save_overlay` writes, as a ``(H, W, 3)`` uint8 RGB array.

    The blended ``(Y, X)`` overlay is at rows ``[top, top + Y)`` and columns
    ``[0, X)``, where ``top`` is 0 without a title; the colour bar and its
    0 / 0.5 / 1 ticks are on the right.
    """
    from PIL import Image, ImageDraw

    image = np.asarray(image)
    cam = np.asarray(cam, dtype=np.float32)
    if image.ndim != 2 or cam.shape != image.shape:
        raise ValueError(f"image {image.shape} and cam {cam.shape} must be the same 2-D (Y, X) shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = image.shape
    grey = _grey(image)[..., None]
    blend = (1 - alpha) * grey + alpha * _colormap(cam, cmap)

    font_size = int(min(16, max(10, height // 24)))
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(probe.textbbox((0, 0), t, font=font)[2] for t in ("0", "0.5", "1"))
    gap, bar_w, tick = 6, max(10, min(24, width // 30)), 3
    top = font_size + 8 if title else 0
    fig_w = width + gap + bar_w + tick + 3 + label_w + 4
    if title:
        fig_w = max(fig_w, probe.textbbox((0, 0), title, font=font)[2] + 8)
    pad_v = font_size // 2 + 1  # room for the "1" and "0" labels at the bar's ends
    fig_h = top + height + (pad_v if height < 3 * font_size else 0)
    figure = np.full((fig_h, fig_w, 3), 255, np.uint8)
    figure[top:top + height, :width] = np.round(blend * 255).astype(np.uint8)
    x0 = width + gap
    ramp = _colormap(np.linspace(1.0, 0.0, height)[:, None].repeat(bar_w, 1), cmap)
    figure[top:top + height, x0:x0 + bar_w] = np.round(ramp * 255).astype(np.uint8)

    canvas = Image.fromarray(figure)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((x0 - 1, top, x0 + bar_w, top + height - 1), outline=(0, 0, 0))
    for value, text in ((1.0, "1"), (0.5, "0.5"), (0.0, "0")):
        y = top + round((1 - value) * (height - 1))
        draw.line((x0 + bar_w, y, x0 + bar_w + tick, y), fill=(0, 0, 0))
        box = draw.textbbox((0, 0), text, font=font)
        ty = min(max(y - (box[1] + box[3]) // 2, 0), fig_h - box[3])
        draw.text((x0 + bar_w + tick + 3, ty), text, fill=(0, 0, 0), font=font)
    if title:
        draw.text((4, 3), title, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def save_overlay(image: np.ndarray, cam: np.ndarray, path: str | os.PathLike, *, title: str | None = None,
                 cmap: str = "inferno", alpha: float = 0.5) -> Path:
    """Write the Grad-CAM map over the grey EM slice, with a colour bar, as an RGB PNG.

    Args:
        image: raw ``(Y, X)`` slice (any dtype; shown with a 0.5-99.5 %
            percentile stretch).
        cam: ``(Y, X)`` map in ``[0, 1]``.
        path: output ``.png`` (written under a temporary name, then renamed).
        title: optional line of text above the image.
        cmap: ``"inferno"`` (default, perceptually uniform) or ``"jet"``.
        alpha: weight of the colour map in the blend.

    Returns:
        The path.  The figure is ``(Y + top, X + legend, 3)`` uint8, see
        :func:`render_overlay`.  Uses Pillow (a dependency of scikit-image).
    """
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"overlay path {path}: use a .png file")
    figure = render_overlay(image, cam, title=title, cmap=cmap, alpha=alpha)
    with atomic_output(path) as tmp:
        Image.fromarray(figure).save(tmp, format="PNG")
    return path


# --------------------------------------------------------------------------- explain


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "class"


def _read_mask(mask_path: str | os.PathLike, z: int, image_depth: int, shape: tuple[int, int]) -> np.ndarray:
    mask = read_image(mask_path)
    if mask.shape[0] == 1:
        mask = mask[0]
    elif mask.shape[0] == image_depth:
        mask = mask[z]
    else:
        raise ValueError(f"mask {mask_path} has {mask.shape[0]} slices; expected 1 or the image's {image_depth}")
    if mask.shape != shape:
        raise ValueError(f"mask {mask_path} has slice shape {mask.shape}; expected the image's {shape}")
    return mask != 0


def explain(
    model_paths: str | os.PathLike | Sequence[str | os.PathLike],
    image_path: str | os.PathLike,
    *,
    classes: str | Sequence[str],
    out_dir: str | os.PathLike,
    layer: str = BOTTLENECK,
    z: int = 0,
    mask_path: str | os.PathLike | None = None,
    array_format: str = "npy",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Grad-CAM maps of ``classes`` on slice ``z`` of an image, for one model or every ensemble member.

    Writes, per class, ``gradcam_<class>.npy`` (or ``.tif``; float32
    ``(Y, X)`` in ``[0, 1]``) and ``gradcam_<class>.png`` (the map over the
    grey slice with a colour bar) into ``out_dir`` — or into
    ``out_dir/member_<i>/`` for each of several models — and a JSON summary
    ``out_dir/gradcam_summary.json`` with the raw maxima and targets.

    Args:
        model_paths: a run directory or ``model.pt``, or a list of them.
        image_path: a 2-D image or ``(Z, Y, X)`` stack (any :mod:`emseg.io` format).
        classes: class name(s) to explain.
        out_dir: output folder (created).
        layer: ``"bottleneck"`` or a module name (see :func:`resolve_layer`).
        z: slice index; 2.5-D models get the context stack centred on it,
            3-D models the sub-stack of their ``window_3d`` depth around it.
        mask_path: optional target mask (non-zero = target), 2-D or a stack
            like the image; default target: the pixels predicted as the class.
        array_format: ``"npy"`` or ``"tif"``.
        overwrite: replace existing outputs.

    Returns:
        The summary written to ``gradcam_summary.json``.
    """
    paths = [Path(model_paths)] if isinstance(model_paths, (str, os.PathLike)) else [Path(p) for p in model_paths]
    names = [classes] if isinstance(classes, str) else list(classes)
    if not paths:
        raise ValueError("model_paths is empty: pass at least one run directory or model.pt")
    if not names:
        raise ValueError("classes is empty: pass at least one class name (--class NAME)")
    if array_format not in ARRAY_FORMATS:
        raise ValueError(f"array_format {array_format!r}: expected one of {', '.join(ARRAY_FORMATS)}")
    out_dir = Path(out_dir)

    models = split_ensembles(paths)  # an ensemble model.pt counts as its members: one map each
    member_dirs = [out_dir] if len(models) == 1 else [out_dir / f"member_{i}" for i in range(len(models))]
    planned = [out_dir / SUMMARY_FILENAME] + [d / f"gradcam_{_safe(c)}.{ext}" for d in member_dirs for c in names
                                               for ext in (array_format, "png")]
    if not overwrite:
        existing = [str(p) for p in planned if p.exists()]
        if existing:
            raise FileExistsError(f"{existing[0]} already exists ({len(existing)} outputs); pass overwrite=True "
                                  "(--overwrite) to replace them")

    data = open_image(image_path)
    with data:
        depth = int(data.array.shape[0])
        if not 0 <= z < depth:
            raise ValueError(f"slice {z} is outside the image {image_path} with {depth} slice(s) (0-{depth - 1})")
        raw = np.asarray(data.array[z])
        mask = _read_mask(mask_path, z, depth, raw.shape) if mask_path is not None else None
        stacks: dict[int, np.ndarray] = {1: raw}
        members = []
        for (path, ckpt), member_dir in zip(models, member_dirs):
            predictor = Predictor.from_checkpoint_dict(ckpt)
            _torch_model(predictor)  # refuses random forests before any work
            context = predictor.context_slices
            record: dict[str, Any] = {"model": str(path), "dir": os.path.relpath(member_dir, out_dir),
                                      "context_slices": context, "spatial_dims": predictor.spatial_dims,
                                      "classes": {}}
            centre = None
            if predictor.spatial_dims == 3:  # the sub-stack of the model's window depth around z
                window = min(int(predictor.window_3d[0]), depth)
                z0 = min(max(0, z - window // 2), depth - window)
                model_input = np.asarray(data.array[z0:z0 + window])
                centre = z - z0
                record["slices"] = [z0, z0 + window]
            else:
                if context not in stacks:
                    stacks[context] = _context_stack(data.array, z, context)
                model_input = stacks[context]
            for name in names:
                result = compute_grad_cam(predictor, model_input, class_name=name, layer=layer, mask=mask,
                                          centre=centre)
                stem = f"gradcam_{_safe(name)}"
                array_file = member_dir / f"{stem}.{array_format}"
                if array_format == "npy":
                    with atomic_output(array_file) as tmp:
                        with open(tmp, "wb") as fh:
                            np.save(fh, result.cam)
                else:
                    write_image(array_file, result.cam, overwrite=True)
                title = f"Grad-CAM {name} | {result.layer} | z={z}"
                save_overlay(raw, result.cam, member_dir / f"{stem}.png", title=title)
                record["layer"] = result.layer
                record["classes"][name] = {"array": os.path.relpath(array_file, out_dir),
                                           "png": os.path.relpath(member_dir / f"{stem}.png", out_dir),
                                           **result.summary()}
                logger.info("%s: Grad-CAM of %r at %s (raw max %.3g, %d target pixels, %.0f%% of the map on them)",
                            path, name, result.layer, result.raw_max, result.target_pixels,
                            100 * result.mass_in_target)
            members.append(record)
            del predictor

    summary = {"image": str(image_path), "z": z, "shape": list(raw.shape), "layer": layer,
               "mask": None if mask_path is None else str(mask_path),
               "target": "mask" if mask is not None else "prediction", "members": members}
    with atomic_output(out_dir / SUMMARY_FILENAME) as tmp:
        Path(tmp).write_text(json.dumps(_finite(summary), indent=2))
    return summary


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value

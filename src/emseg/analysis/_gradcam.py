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

Modules: this one (the algorithm), ``_gradcam_layers`` (the network and layer), ``_overlay`` (drawing),
``_explain`` (the ``emseg explain`` driver).

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

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from emseg.analysis._gradcam_layers import BOTTLENECK, _torch_model, resolve_layer

logger = logging.getLogger(__name__)

__all__ = ["GradCamResult", "compute_grad_cam", "grad_cam"]


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



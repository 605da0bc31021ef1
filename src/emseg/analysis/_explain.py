"""``emseg explain``: Grad-CAM maps of one or more models (ensembles split into members) for a slice of
an image, written as arrays, overlays and a JSON summary (the driver around :mod:`._gradcam`)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emseg.analysis._gradcam import compute_grad_cam
from emseg.analysis._gradcam_layers import BOTTLENECK, _torch_model
from emseg.analysis._overlay import save_overlay
from emseg.data import context_stack as _context_stack
from emseg.ensemble import split_ensembles
from emseg.inference import Predictor
from emseg.io import atomic_output, open_image, read_image, write_image

logger = logging.getLogger(__name__)

__all__ = ["ARRAY_FORMATS", "SUMMARY_FILENAME", "explain"]

SUMMARY_FILENAME = "gradcam_summary.json"
ARRAY_FORMATS = ("npy", "tif")


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

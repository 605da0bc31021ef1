"""Checkpoints that rebuild themselves: weights plus everything needed to predict.

A checkpoint is a ``torch.save`` of a plain dictionary (tensors, numbers,
strings, lists, dicts) and is always loaded with ``weights_only=True``: a
model file is data, never code.

This module owns the schema (required fields, the inference defaults a
checkpoint falls back on), saving, safe loading, validation and rebuilding the
network (:func:`rebuild_network`). It sits in ``models`` so that inference,
ensembles and export read models without importing training (issue 17).

The intensity normaliser (:class:`emseg.data.Normalizer`) stays in ``data``:
it is fitted on training patches and applied by the samplers, so it is a data
transform, and ``data`` sits above ``models``. The checkpoint validates its
``normalization`` dictionary; the predictor (``inference``, above ``data``)
pairs the rebuilt network with ``Normalizer.from_dict(ckpt["normalization"])``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from emseg.io import atomic_output
from emseg.models._registry import MODELS, ModelSpec, build_model

from emseg.models import _CHECKPOINT_NAMES  # the names emseg.models exports from here, listed once

__all__ = list(_CHECKPOINT_NAMES)

CHECKPOINT_FORMAT = "emseg-model"
CHECKPOINT_VERSION = 1
MODEL_FILENAME = "model.pt"

#: Sliding-window defaults: written into every new checkpoint's ``inference`` block and used when an older
#: checkpoint lacks the field (and by a :class:`~emseg.inference.Predictor` built without a checkpoint).
DEFAULT_WINDOW: tuple[int, int] = (512, 512)
DEFAULT_OVERLAP: float = 0.25
DEFAULT_DIVISOR: int = 16
DEFAULT_WINDOW_3D: tuple[int, int, int] = (5, 256, 256)

_REQUIRED = {
    "format": str,
    "format_version": int,
    "backend": str,
    "model": dict,
    "classes": list,
    "normalization": dict,
    "state": dict,
}


#: An ensemble artefact (emseg.ensemble): ``classes``, ``method``, ``weights`` and
#: ``members`` (full member checkpoints) instead of one model's weights.
ENSEMBLE_BACKEND = "ensemble"
_ENSEMBLE_REQUIRED = {
    "format": str,
    "format_version": int,
    "backend": str,
    "classes": list,
    "method": str,
    "weights": list,
    "members": list,
}


class CheckpointError(ValueError):
    """A file that is not a usable emseg model; the message says why."""


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A run directory (holding ``model.pt``) or a checkpoint file -> the file."""
    path = Path(path)
    if path.is_dir():
        candidate = path / MODEL_FILENAME
        if not candidate.is_file():
            raise CheckpointError(
                f"{path} is a folder without {MODEL_FILENAME}: pass the run directory written by "
                f"'emseg train' (training may not have finished its first epoch) or a .pt file"
            )
        return candidate
    if not path.is_file():
        raise CheckpointError(f"model not found: {path} (expected a run directory or a model .pt file)")
    return path


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write never leaves a truncated model."""
    data = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **checkpoint}
    required = _ENSEMBLE_REQUIRED if data.get("backend") == ENSEMBLE_BACKEND else _REQUIRED
    for key, kind in required.items():
        if not isinstance(data.get(key), kind):
            raise ValueError(f"checkpoint field {key!r} must be a {kind.__name__}")
    with atomic_output(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a checkpoint (run directory or file) safely.

    Raises:
        CheckpointError: not a torch file, not an emseg model, a newer format,
            or missing fields; the message names the file and the field.
    """
    file = resolve_model_path(path)
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a safe model file"
        raise CheckpointError(
            f"{file} could not be loaded as an emseg model with weights_only=True ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); only files written by emseg are accepted"
        ) from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{file} is not an emseg model (no format={CHECKPOINT_FORMAT!r} field)")
    if data.get("format_version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{file} has format version {data['format_version']}, newer than this emseg understands "
            f"({CHECKPOINT_VERSION}); upgrade emseg"
        )
    if data.get("backend") == ENSEMBLE_BACKEND:
        _check_ensemble(data, str(file))
    else:
        _check_fields(data, str(file))
    return data


def _check_fields(data: dict[str, Any], where: str) -> None:
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise CheckpointError(f"{where} is missing field {key!r} ({kind.__name__}); the file is damaged or incomplete")
    for key in ("name", "options", "in_channels"):
        if key not in data["model"]:
            raise CheckpointError(f"{where} is missing field 'model.{key}'")
    if len(data["classes"]) < 2:
        raise CheckpointError(f"{where}: 'classes' must list at least 2 classes")
    offsets = (data.get("inference") or {}).get("logit_offsets")
    if offsets is not None and not (isinstance(offsets, (list, tuple)) and len(offsets) == len(data["classes"])
                                    and all(isinstance(o, (int, float)) and math.isfinite(o) for o in offsets)):
        raise CheckpointError(f"{where}: 'inference.logit_offsets' must be {len(data['classes'])} finite numbers "
                              f"(one per class), got {offsets!r}; run `emseg calibrate` on the run directory "
                              f"to fit them again")


def _check_ensemble(data: dict[str, Any], where: str) -> None:
    """An ensemble: its own fields, then every member checked like a single model."""
    for key, kind in _ENSEMBLE_REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise CheckpointError(f"{where} is missing field {key!r} ({kind.__name__}); the file is damaged or incomplete")
    members = data["members"]
    if not members or len(data["weights"]) != len(members):
        raise CheckpointError(f"{where}: an ensemble needs at least one member and one weight per member "
                              f"(got {len(members)} members, {len(data['weights'])} weights)")
    for i, member in enumerate(members):
        name = f"{where} member {i}"
        if not isinstance(member, dict) or member.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{name} is not an emseg model checkpoint")
        if member.get("backend") == ENSEMBLE_BACKEND:
            raise CheckpointError(f"{name} is itself an ensemble; nested ensembles are not supported")
        _check_fields(member, name)
        if list(member["classes"]) != list(data["classes"]):
            raise CheckpointError(f"{name} has classes {member['classes']} but the ensemble has {data['classes']}")


def inference_defaults(*, divisor: int = DEFAULT_DIVISOR) -> dict[str, Any]:
    """The ``inference`` block of a new checkpoint: window, overlap and the network's divisor."""
    return {"window": list(DEFAULT_WINDOW), "overlap": DEFAULT_OVERLAP, "divisor": int(divisor)}


def rebuild_network(ckpt: dict[str, Any]) -> tuple[Any, ModelSpec]:
    """The trained network of a single-model checkpoint (validated by :func:`load_checkpoint`), in eval mode.

    Returns:
        ``(model, spec)``: a torch module (or a :class:`~emseg.models.RandomForestSegmenter`) with the
        checkpoint's weights, and its registry entry.

    Raises:
        CheckpointError: the backend does not match the model, the weights do not fit it, or a valid-padding
            model's stored margin differs from the network's.
    """
    meta = ckpt["model"]
    spec = MODELS.get(meta["name"])
    if ckpt["backend"] != spec.backend:
        raise CheckpointError(f"checkpoint backend {ckpt['backend']!r} does not match model {meta['name']!r}")
    if spec.backend == "random-forest":
        from emseg.models._random_forest import RandomForestSegmenter  # scikit-learn: loaded only when needed

        model = RandomForestSegmenter.from_state_dict(ckpt["state"])
    else:
        model = build_model(meta["name"], in_channels=meta["in_channels"], num_classes=len(ckpt["classes"]),
                            options=meta["options"], pretrained=False)  # trained weights follow
        try:
            model.load_state_dict(ckpt["state"])
        except RuntimeError as err:
            raise CheckpointError(f"weights do not fit model {meta['name']!r}: {err}") from None
        model.eval()
    inference = ckpt.get("inference", {})
    if spec.valid_padding and int(inference.get("margin", -1)) != int(getattr(model, "output_margin", -2)):
        raise CheckpointError(f"checkpoint margin {inference.get('margin')} does not match model "
                              f"{meta['name']!r} (output margin {getattr(model, 'output_margin', None)})")
    return model, spec

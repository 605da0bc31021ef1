"""Start a network from another one's weights: ``model.init`` / ``emseg train --init``.

The start is a trained model (``model.pt`` or its run directory) or a
pretraining checkpoint (``emseg pretrain``, format :data:`PRETRAINED_FORMAT`).
Every tensor whose name and shape match is copied into the new network; the
rest stays at its random initialisation and is reported by name.  Only the
tensors whose shape depends on the number of classes (the segmentation head)
may differ in shape: any other difference means another architecture and is
refused, with the specs of both sides in the message.  Files are read with
``torch.load(..., weights_only=True)``: a model file is data, never code.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emseg.io import atomic_output
from emseg.models._checkpoint import (
    CHECKPOINT_FORMAT,
    ENSEMBLE_BACKEND,
    CheckpointError,
    load_checkpoint,
    resolve_model_path,
)
from emseg.models._registry import MODELS, build_model

from emseg.models import _INIT_NAMES  # the names emseg.models exports from here, listed once

logger = logging.getLogger(__name__)

__all__ = list(_INIT_NAMES)

PRETRAINED_FORMAT = "emseg-pretrained"
PRETRAINED_VERSION = 1
#: The file `emseg pretrain` writes into its output folder (a folder holding it is accepted as a start).
PRETRAINED_FILENAME = "pretrained.pt"

_PRETRAINED_REQUIRED = {"format": str, "format_version": int, "model": dict, "state": dict, "method": str}


def save_pretrained_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Write a pretraining checkpoint atomically.

    ``checkpoint`` holds ``model`` (``name``, ``options``, ``in_channels``, ...),
    ``state`` (the network's weights, temporary heads included), ``method``
    (the pretext task), ``exclude`` (names of tensors that belong to temporary
    pretext heads and must never be transferred), ``normalization`` and ``data``
    (what the pretraining saw).
    """
    data = {"format": PRETRAINED_FORMAT, "format_version": PRETRAINED_VERSION, "exclude": [], **checkpoint}
    for key, kind in _PRETRAINED_REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise ValueError(f"pretraining checkpoint field {key!r} must be a {kind.__name__}")
    with atomic_output(path) as tmp:
        torch.save(data, tmp)


def _resolve_start(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir() and (path / PRETRAINED_FILENAME).is_file():
        return path / PRETRAINED_FILENAME
    return resolve_model_path(path)  # a run directory (model.pt) or a file; clear message otherwise


def load_init_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint to start from: a trained single model or a pretraining checkpoint, loaded safely.

    Accepts a ``.pt`` file, a run directory of ``emseg train`` (its ``model.pt``)
    or an output folder of ``emseg pretrain`` (its ``pretrained.pt``).

    Raises:
        CheckpointError: not found, not loadable with ``weights_only=True``, an
            ensemble or a random forest, or missing fields.
    """
    file = _resolve_start(path)
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a safe model file"
        raise CheckpointError(f"{file} could not be loaded with weights_only=True ({type(err).__name__}); "
                              f"model.init takes a model.pt, a run directory or a pretrained.pt written by emseg") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == CHECKPOINT_FORMAT:
        data = load_checkpoint(file)  # the full validation of a trained model
        if data["backend"] == ENSEMBLE_BACKEND:
            raise CheckpointError(f"{file} is an ensemble: model.init takes one network; pass one member's run "
                                  f"directory (e.g. OUT/seed-0) instead")
        if data["backend"] != "torch":
            raise CheckpointError(f"{file} is a {data['backend']!r} model without network weights; model.init "
                                  f"takes a neural network's checkpoint")
        return data
    if fmt != PRETRAINED_FORMAT:
        raise CheckpointError(f"{file} is neither an emseg model nor an emseg pretraining checkpoint (format "
                              f"{fmt!r}); model.init takes a model.pt, a run directory or a pretrained.pt")
    if data.get("format_version", 0) > PRETRAINED_VERSION:
        raise CheckpointError(f"{file} has pretraining format version {data['format_version']}, newer than this "
                              f"emseg understands ({PRETRAINED_VERSION}); upgrade emseg")
    for key, kind in _PRETRAINED_REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise CheckpointError(f"{file} is missing field {key!r} ({kind.__name__}); the file is damaged or incomplete")
    return data


def class_dependent_keys(name: str, *, options: dict[str, Any], in_channels: int, num_classes: int) -> set[str]:
    """Names of the tensors whose shape depends on the number of classes (the head(s)) of a registry network.

    Found by building the network (without allocating weights) for ``num_classes`` and
    ``num_classes + 1`` classes and comparing the shapes.
    """
    shapes = []
    for k in (num_classes, num_classes + 1):
        with torch.device("meta"):
            net = build_model(name, in_channels=in_channels, num_classes=k, options=options, pretrained=False)
        shapes.append({n: tuple(t.shape) for n, t in net.state_dict().items()})
    return {n for n, s in shapes[0].items() if shapes[1].get(n) != s}


@dataclass
class InitReport:
    """What :func:`initialise_network` copied.

    Attributes:
        source: the checkpoint file.
        loaded: tensor names copied from it.
        random: tensor names left at their random initialisation (the head, say).
        unused: tensor names of the checkpoint the network has no use for (pretext heads, momentum encoders).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    random: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One paragraph: counts per top-level module, and the random tensors by name."""
        total = len(self.loaded) + len(self.random)
        text = f"initialised from {self.source}: loaded {len(self.loaded)} of {total} tensors ({_by_module(self.loaded)})"
        text += f"; left random: {', '.join(self.random)}" if self.random else "; nothing left random"
        if self.unused:
            text += f"; not used from the checkpoint: {_by_module(self.unused)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": list(self.loaded), "random": list(self.random),
                "unused": list(self.unused)}


def _by_module(names: list[str]) -> str:
    counts: dict[str, int] = {}
    for n in names:
        top = n.split(".")[0] if "." in n else n
        counts[top] = counts.get(top, 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"


def _spec_text(meta: dict[str, Any]) -> str:
    return (f"{meta.get('name')!r} with options {meta.get('options')} and {meta.get('in_channels')} input "
            f"channel(s)")


def _match(state: dict[str, torch.Tensor], source: str | os.PathLike, *, name: str, options: dict[str, Any],
           in_channels: int, num_classes: int) -> tuple[InitReport, dict[str, torch.Tensor]]:
    """The report and the tensors to copy (name -> checkpoint tensor); raises on another architecture."""
    if MODELS.get(name).backend != "torch":
        raise CheckpointError(f"model.init: model {name!r} is not a neural network; model.init starts networks only "
                              f"(remove model.init)")
    ckpt = load_init_checkpoint(source)
    file = str(_resolve_start(source))
    meta = ckpt["model"]
    mine = {"name": name, "options": options, "in_channels": in_channels}
    exclude = set(ckpt.get("exclude") or [])
    theirs = {k: v for k, v in ckpt["state"].items() if k not in exclude and isinstance(v, torch.Tensor)}
    head = class_dependent_keys(name, options=options, in_channels=in_channels, num_classes=num_classes)
    report, copy, mismatched = InitReport(source=file), {}, []
    for key, tensor in state.items():
        other = theirs.get(key)
        if other is not None and tuple(other.shape) == tuple(tensor.shape):
            copy[key] = other
            report.loaded.append(key)
        else:
            if other is not None and key not in head:
                mismatched.append(f"{key} {tuple(other.shape)} in the checkpoint, {tuple(tensor.shape)} here")
            report.random.append(key)
    report.unused = [k for k in ckpt["state"] if k not in state or k in exclude]
    if mismatched:
        shown = "; ".join(mismatched[:3]) + (f"; and {len(mismatched) - 3} more" if len(mismatched) > 3 else "")
        raise CheckpointError(
            f"model.init {file}: another architecture ({shown}). The checkpoint holds {_spec_text(meta)}, the "
            f"configuration asks for {_spec_text(mine)}; use the same model block (name, options, "
            f"context_slices) as the checkpoint, or start from random weights (remove model.init)")
    if not any(not k.endswith("num_batches_tracked") for k in report.loaded):
        raise CheckpointError(
            f"model.init {file}: no tensor of the checkpoint matches the network by name and shape. The "
            f"checkpoint holds {_spec_text(meta)}, the configuration asks for {_spec_text(mine)}; use the same "
            f"model block as the checkpoint, or remove model.init")
    if meta.get("name") != name:
        logger.warning("model.init %s: the checkpoint's network is %r, this one %r; only tensors with the same "
                       "name and shape are loaded", file, meta.get("name"), name)
    return report, copy


def check_initialisation(source: str | os.PathLike, *, name: str, options: dict[str, Any], in_channels: int,
                         num_classes: int) -> InitReport:
    """What :func:`initialise_network` would load, checked without building real weights (before a run writes
    anything). Raises :class:`CheckpointError` as it does."""
    with torch.device("meta"):
        net = build_model(name, in_channels=in_channels, num_classes=num_classes, options=options, pretrained=False)
    return _match(net.state_dict(), source, name=name, options=options, in_channels=in_channels,
                  num_classes=num_classes)[0]


def initialise_network(model: torch.nn.Module, source: str | os.PathLike, *, name: str, options: dict[str, Any],
                       in_channels: int, num_classes: int) -> InitReport:
    """Copy every matching tensor (same name, same shape) of ``source`` into ``model``, in place.

    Args:
        model: the freshly built network (registry model ``name`` with ``options``).
        source: a ``model.pt``, a run directory, or a pretraining checkpoint / folder.
        name, options, in_channels, num_classes: how ``model`` was built (to tell its head apart).

    Returns:
        An :class:`InitReport` naming what was loaded and what was left random.

    Raises:
        CheckpointError: the file is not a usable start, no tensor matches, or a tensor outside the
            class-dependent head has another shape (another architecture); the message gives both specs.
    """
    state = model.state_dict()
    report, copy = _match(state, source, name=name, options=options, in_channels=in_channels, num_classes=num_classes)
    with torch.no_grad():
        for key, tensor in copy.items():
            state[key].copy_(tensor.to(dtype=state[key].dtype))
    return report

"""Prediction from exported files: an ``.onnx`` file (onnxruntime) or a bioimage.io ``.zip`` (its state dict).

:func:`load_exported` returns a plain :class:`~emseg.inference.Predictor` whose ``model`` is the exported
network, fed with the normalisation, context slices, window, overlap and margin stored in the export, so
``emseg predict``, the blockwise engine and ``emseg evaluate --model`` treat it like the original model.pt.
Reading an export is inference's job; :mod:`emseg.export` writes the files (and sits above this layer).
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emseg._optional import require
from emseg.constants import BIOIMAGEIO_METADATA, BIOIMAGEIO_STATE, EXPORT_EXTRA, EXPORT_FORMAT, EXPORT_METADATA_KEY
from emseg.constants import EXPORT_VERSION, EXPORTED_SUFFIXES
from emseg.data import Normalizer
from emseg.inference._predictor import Predictor
from emseg.models import load_checkpoint, network_from_metadata, skeleton

logger = logging.getLogger(__name__)

__all__ = ["OnnxNetwork", "is_exported", "load_exported", "model_classes", "onnx_session", "read_metadata",
           "read_onnx_metadata"]


def is_exported(path: str | os.PathLike) -> bool:
    """True for a path emseg reads as an exported model (``.onnx`` or ``.zip``), not a model.pt."""
    return str(path).lower().endswith(EXPORTED_SUFFIXES)


def onnx_session(path: str | Path, *, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of ``path`` using ``threads`` intra-op threads (default: torch's)."""
    ort = require("onnxruntime", "running an ONNX model", EXPORT_EXTRA)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def read_onnx_metadata(path: str | Path) -> dict[str, Any] | None:
    """The emseg metadata in an ONNX file's ``metadata_props``, or None."""
    onnx = require("onnx", "reading an ONNX model", EXPORT_EXTRA)
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == EXPORT_METADATA_KEY:
            return json.loads(entry.value)
    return None


def _check(meta: Any, path: Path) -> dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} has no emseg metadata: only models exported by `emseg export` can be used here "
                         "(the normalisation, classes and window are read from it)")
    if int(meta.get("format_version", 0)) > EXPORT_VERSION:
        raise ValueError(f"{path} was exported by a newer emseg (export format {meta['format_version']}, this emseg "
                         f"reads up to {EXPORT_VERSION}); upgrade emseg")
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The emseg metadata stored in an exported ``.onnx`` file or bioimage.io ``.zip``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path}")
    if path.name.lower().endswith(".onnx"):
        try:
            meta = read_onnx_metadata(path)
        except RuntimeError:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged file: say so
            raise ValueError(f"{path} could not be read as an ONNX model ({type(err).__name__})") from None
        return _check(meta, path)
    try:
        with zipfile.ZipFile(path) as archive:
            if BIOIMAGEIO_METADATA not in archive.namelist():
                raise ValueError(f"{path} is not a bioimage.io package written by `emseg export` (no "
                                 f"{BIOIMAGEIO_METADATA} inside)")
            meta = json.loads(archive.read(BIOIMAGEIO_METADATA))
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not a zip archive (expected a bioimage.io package)") from None
    return _check(meta, path)


def model_classes(path: str | os.PathLike) -> list[str]:
    """Class names of a model: an exported file, or a run directory / model.pt."""
    if is_exported(path):
        return list(read_metadata(path)["classes"])
    return list(load_checkpoint(path)["classes"])


class OnnxNetwork(nn.Module):
    """An ONNX network run by onnxruntime behind the torch-module call the :class:`Predictor` makes.

    ``(N, C, ...)`` float tensor in, ``(N, K, ...)`` float32 tensor out, on the input's device.
    Valid-padding networks also answer ``output_margin``, ``alignment``, ``output_size`` and
    ``valid_input_size`` (from the architecture built on the meta device, without weights).
    """

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any]) -> None:
        super().__init__()
        self._session = onnx_session(path)
        self.spatial_dims = int(meta["spatial_dims"])
        # a plain list: the weightless architecture must not become a submodule (it is not moved with .to())
        self._shape = [skeleton(meta["models"][0], len(meta["classes"]))] if meta.get("margin") else []
        if self._shape:
            self.output_margin = int(meta["margin"])

    @property
    def alignment(self) -> int:
        return int(self._shape[0].alignment)

    def output_size(self, size: int) -> int:
        return self._shape[0].output_size(size)

    def valid_input_size(self, min_size: int) -> int:
        return self._shape[0].valid_input_size(min_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._session.run(None, {"input": x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def _zip_network(path: Path, meta: dict[str, Any]) -> nn.Module:
    """The exported network of an emseg bioimage.io package, from its state dict (loaded safely)."""
    net = network_from_metadata(meta)
    with zipfile.ZipFile(path) as archive:
        state = torch.load(io.BytesIO(archive.read(BIOIMAGEIO_STATE)), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


def load_exported(path: str | os.PathLike, **kwargs: Any) -> Predictor:
    """A :class:`~emseg.inference.Predictor` running an exported ``.onnx`` or bioimage.io ``.zip`` model.

    ``kwargs`` are the options of :meth:`Predictor.from_checkpoint` (``precision``, ``tta``, ``overlap``,
    ``window``, ``batch_size``, ``device``, ``calibrated``, ``jit``). ``overlap="auto"`` uses the
    receptive-field radius measured at export; ``jit`` is ignored for ONNX (onnxruntime optimises it).
    """
    path = Path(path)
    meta = read_metadata(path)
    if kwargs.pop("calibrated", True) is False and meta.get("calibrated"):
        raise ValueError(f"{path} has its calibration offsets built into the exported network; --no-calibration "
                         "needs the original model.pt")
    onnx = path.name.lower().endswith(".onnx")
    if onnx:
        if kwargs.pop("jit", False):
            logger.info("jit: not used for %s (onnxruntime runs the ONNX graph)", path.name)
        kwargs.setdefault("device", torch.device("cpu"))
        net: nn.Module = OnnxNetwork(path, meta)
    else:
        net = _zip_network(path, meta)
    overlap = kwargs.pop("overlap", meta["overlap"])
    if meta["spatial_dims"] == 3 and meta.get("window_3d"):
        kwargs.setdefault("window_3d", tuple(meta["window_3d"]))
    kwargs.setdefault("window", tuple(meta["window"]))
    predictor = Predictor(
        net,
        classes=list(meta["classes"]),
        normalizer=Normalizer.from_dict(meta["normalization"]),
        context_slices=int(meta["context_slices"]),
        divisor=int(meta["divisor"]),
        spatial_dims=int(meta["spatial_dims"]),
        overlap=0.25 if overlap == "auto" else overlap,
        **kwargs,
    )
    if meta.get("receptive_radius") is not None:
        predictor._receptive_radius = int(meta["receptive_radius"])  # measured on the torch network at export
    if overlap == "auto":
        predictor.overlap = predictor.auto_overlap()
    return predictor

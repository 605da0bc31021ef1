"""``emseg export``: a model.pt (single network or ensemble) as ONNX, TorchScript or a bioimage.io package.

Every export is checked before it is kept: the written file is run (onnxruntime, the TorchScript
interpreter, or bioimage.io's own model test) on a tile of a real EM image and must give emseg's
probabilities to 1e-4 and its labels exactly; otherwise nothing is left at the output path.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emseg._optional import require as _require
from emseg.constants import EXPORT_EXTRA
from emseg.data import Normalizer, context_stack
from emseg.export._network import build_export_network, check_exportable, export_metadata
from emseg.inference import Predictor
from emseg.io import atomic_output, file_sha256, open_image
from emseg.models import load_checkpoint, resolve_model_path, skeleton

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_EXTRA", "FORMATS", "ExportResult", "export_model", "require"]

#: Export formats and the suffix each output must have.
FORMATS = {"onnx": (".onnx",), "torchscript": (".pt", ".ts", ".torchscript"), "bioimageio": (".zip",)}
OPSET = 17
#: Largest in-plane size of the tile the export is checked on (and the bioimage.io test tensor).
CHECK_TILE = 256
PROB_TOL = 1e-4
DEFAULT_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "test_raw.tif"


def require(module: str, what: str) -> Any:
    """Import an optional dependency of the export, or say which extra installs it."""
    return _require(module, what, EXPORT_EXTRA)


class ExportResult(dict):
    """``path``, ``format``, ``max_prob_diff`` (exported vs torch on the check tiles)."""


def _load(model: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    path = resolve_model_path(model)
    return load_checkpoint(path), path


def _parse_window(window: Any, spatial_dims: int) -> tuple[int, ...] | None:
    if window is None:
        return None
    values = tuple(int(w) for w in window)
    if len(values) != spatial_dims or any(w < 1 for w in values):
        axes = "Y X" if spatial_dims == 2 else "Z Y X"
        raise ValueError(f"--window {' '.join(map(str, values))}: a {spatial_dims}-D model takes {spatial_dims} "
                         f"positive sizes ({axes})")
    return values


def _check_window(net: torch.nn.Module, meta: dict[str, Any], window: tuple[int, ...], name: str) -> None:
    """The network must map a ``window`` input to an output of the same size (less the valid-padding margin)."""
    divisor, margin = int(meta["divisor"]), int(meta["margin"])
    text = " ".join(map(str, window))
    if margin:
        skel = skeleton(meta["models"][0], len(meta["classes"]))
        fits = [skel.valid_input_size(w) == w for w in window]
        if not all(fits):
            suggest = " ".join(str(skel.valid_input_size(w)) for w in window)
            raise ValueError(f"--window {text}: the valid-padding network {name!r} cannot take this window; "
                             f"the nearest sizes it takes are {suggest}")
        return
    channels = int(meta["in_channels"])
    expected = tuple(w - 2 * margin for w in window)
    try:
        with torch.no_grad():
            out = net(torch.zeros((1, channels, *window)))
        ok = tuple(out.shape[2:]) == expected
    except RuntimeError:
        ok = False
    if not ok:
        hint = f"in-plane sizes that are multiples of {divisor}" if len(window) == 2 else \
            f"in-plane multiples of {divisor} and a depth the network's z pooling divides"
        raise ValueError(f"--window {text}: {name!r} cannot take this window (its output would not match the "
                         f"input size); use {hint}")


def _sample_tile(meta: dict[str, Any], sample: Path, tile: tuple[int, ...]) -> np.ndarray:
    """Raw ``(C, y, x)`` (2-D; C context slices) or ``(z, y, x)`` (3-D) tile from the middle of ``sample``."""
    with open_image(sample) as data:
        volume = data.array
        shape = tuple(int(s) for s in volume.shape)
        if len(tile) == 2:
            if shape[1] < tile[0] or shape[2] < tile[1]:
                raise ValueError(f"--sample {sample} is {shape[1]} x {shape[2]} in-plane, smaller than the "
                                 f"{tile[0]} x {tile[1]} tile the export is checked on; pass a larger image")
            y0, x0 = (shape[1] - tile[0]) // 2, (shape[2] - tile[1]) // 2
            stack = context_stack(volume, shape[0] // 2, int(meta["context_slices"]))
            return np.ascontiguousarray(stack[:, y0:y0 + tile[0], x0:x0 + tile[1]])
        if any(s < t for s, t in zip(shape, tile)):
            raise ValueError(f"--sample {sample} has shape {shape}, smaller than the {tile} tile the 3-D export is "
                             "checked on; pass a larger volume")
        z0, y0, x0 = ((s - t) // 2 for s, t in zip(shape, tile))
        return np.ascontiguousarray(np.asarray(volume[z0:z0 + tile[0], y0:y0 + tile[1], x0:x0 + tile[2]]))


def _sample_shape(sample: Path) -> tuple[int, int, int]:
    with open_image(sample) as data:
        return tuple(int(s) for s in data.array.shape)  # type: ignore[return-value]


def check_tiles(meta: dict[str, Any], sample_shape: tuple[int, int, int]) -> list[tuple[int, ...]]:
    """Two tile shapes the export is checked on: the main one (also bioimage.io's test tensor) and a smaller
    one (a different size: catches sizes frozen into the exported graph)."""
    divisor = int(meta["divisor"])
    if meta["spatial_dims"] == 3:
        wz, wy, wx = meta["window_3d"]
        size = [min(wz, sample_shape[0]), min(wy, CHECK_TILE, sample_shape[1]), min(wx, CHECK_TILE, sample_shape[2])]
        size[1:] = [max(divisor, s // divisor * divisor) for s in size[1:]]
        small = [size[0], max(divisor, size[1] - divisor), max(divisor, size[2] - 2 * divisor)]
        return [tuple(size), tuple(small)]
    if meta["margin"]:
        skel = skeleton(meta["models"][0], len(meta["classes"]))
        step = int(skel.alignment)
        tiles = []
        limit = min(sample_shape[1:] + (CHECK_TILE + 2 * int(meta["margin"]),))
        m = limit
        while m > 0 and len(tiles) < 2:
            size = skel.valid_input_size(m)
            if size <= limit and (not tiles or size < tiles[-1][0]):
                tiles.append((size, size))
            m -= step
        if not tiles:
            raise ValueError(f"the sample image ({sample_shape[1]} x {sample_shape[2]}) is too small for the valid-"
                             "padding network; pass --sample with a larger image")
        return tiles
    wy, wx = meta["window"]
    size = tuple(max(divisor, min(w, CHECK_TILE, s) // divisor * divisor) for w, s in zip((wy, wx), sample_shape[1:]))
    small = (max(divisor, size[0] - divisor), max(divisor, size[1] - 2 * divisor))
    return [size, small]


def _normalise(meta: dict[str, Any], raw: np.ndarray) -> np.ndarray:
    x = Normalizer.from_dict(meta["normalization"])(raw)
    return x[None] if meta["spatial_dims"] == 3 else x  # (C, ...) with C = 1 for 3-D


def label_mismatches(ref_probs: np.ndarray, got_probs: np.ndarray, *, tol: float = PROB_TOL) -> tuple[int, int]:
    """``(differing labels, of which at near-ties)``: pixels whose argmax differs over axis 1, and how many of
    them have a top-two gap within ``2 * tol`` in the reference (a tie that rounding may break either way)."""
    ref_labels, got_labels = ref_probs.argmax(1), got_probs.argmax(1)
    differ = ref_labels != got_labels
    if not differ.any():
        return 0, 0
    top2 = np.sort(ref_probs, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    return int(differ.sum()), int((differ & (gap <= 2 * tol)).sum())


def compare(reference: torch.Tensor, exported: np.ndarray, what: str) -> float:
    """Max |softmax difference|; raises if over :data:`PROB_TOL` or if a label differs other than at a near-tie
    (two classes within ``2 * PROB_TOL``, which a different summation order may order either way)."""
    ref = torch.softmax(reference.float(), dim=1).numpy()
    got = torch.softmax(torch.from_numpy(np.asarray(exported, np.float32)), dim=1).numpy()
    if ref.shape != got.shape:
        raise RuntimeError(f"{what} gives output shape {got.shape}, torch {ref.shape}: the export is not faithful")
    diff = float(np.abs(ref - got).max())
    differ, ties = label_mismatches(ref, got)
    if diff > PROB_TOL or differ > ties:
        raise RuntimeError(f"{what} disagrees with the torch network on a real tile (max probability difference "
                           f"{diff:.2e}, {differ - ties} labels differ away from ties); not written")
    if differ:
        logger.info("%s: %d pixel(s) at a near-tie (top two classes within %.0e) take the other class", what,
                    differ, 2 * PROB_TOL)
    return diff


def export_model(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str,  # noqa: A002 - the CLI option's name
    window: Any = None,
    sample: str | os.PathLike | None = None,
    overwrite: bool = False,
    name: str | None = None,
    authors: list[str] | None = None,
) -> ExportResult:
    """Export a run directory / ``model.pt`` (single network or mean/weighted ensemble) to ``out``.

    Args:
        model: run directory or ``model.pt`` written by ``emseg train`` or ``emseg ensemble``.
        out: output file: ``.onnx`` (onnx), ``.pt`` (torchscript) or ``.zip`` (bioimageio).
        format: ``"onnx"``, ``"torchscript"`` or ``"bioimageio"``.
        window: the tile ``(y, x)`` (3-D: ``(z, y, x)``) readers should feed; default the model's.
        sample: raw image the checks (and bioimage.io's test tensors and cover) are computed on; default
            emseg's embedded EPFL test crop.
        overwrite: replace an existing ``out``.
        name, authors: bioimage.io metadata (default: from the model).

    Returns:
        :class:`ExportResult` with the path and the agreement measured on the check tile.
    """
    if format not in FORMATS:
        raise ValueError(f"--format {format!r} is not an export format; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if not out.name.lower().endswith(FORMATS[format]):
        raise ValueError(f"--out {out}: a {format} export is written to a {' or '.join(FORMATS[format])} file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    ckpt, path = _load(model)
    check_exportable(ckpt, format)
    require("onnx", "ONNX export") if format == "onnx" else None
    require("onnxruntime", "checking the ONNX export") if format == "onnx" else None
    if format == "bioimageio":
        from emseg.export._bioimageio import check_names, check_pydantic

        check_pydantic()  # first: reads versions only, so it also speaks when bioimageio.spec fails to import
        require("bioimageio.spec", "bioimage.io export")
        require("bioimageio.core", "testing the bioimage.io export")
        check_names(name, authors)
    sample = Path(sample) if sample is not None else DEFAULT_SAMPLE
    if not sample.exists():
        raise FileNotFoundError(f"--sample {sample} not found (a raw EM image the export is checked on)")

    predictor = Predictor.from_checkpoint_dict(ckpt, precision="fp32", device=torch.device("cpu"))
    meta = export_metadata(ckpt, predictor, source_sha256=file_sha256(path))
    net = build_export_network(ckpt)
    wanted = _parse_window(window, meta["spatial_dims"])
    if wanted is not None:
        _check_window(net, meta, wanted, meta["models"][0]["name"])
        meta["window_3d" if meta["spatial_dims"] == 3 else "window"] = list(wanted)
    tiles = check_tiles(meta, _sample_shape(sample))
    raw = [_sample_tile(meta, sample, t) for t in tiles]
    inputs = [torch.from_numpy(_normalise(meta, r))[None] for r in raw]
    with torch.no_grad():
        refs = [net(x) for x in inputs]
    result = ExportResult(path=out, format=format)
    with atomic_output(out, overwrite=overwrite) as tmp:
        if format == "onnx":
            from emseg.export._formats import write_onnx

            result["max_prob_diff"] = write_onnx(net, meta, tmp, inputs, refs)
        elif format == "torchscript":
            from emseg.export._formats import write_torchscript

            result["max_prob_diff"] = write_torchscript(net, meta, tmp, inputs, refs)
        else:
            from emseg.export._bioimageio import write_bioimageio

            result.update(write_bioimageio(net, meta, ckpt, tmp, raw=raw[0], inputs=inputs[0], reference=refs[0],
                                           predictor=predictor, name=name, authors=authors))
    logger.info("exported %s (%s) -> %s (max probability difference %.2e on a %s tile of %s)", path, format, out,
                result.get("max_prob_diff", 0.0), "x".join(map(str, tiles[0])), sample)
    return result


def metadata_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True)


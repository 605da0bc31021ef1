"""Per-slice inputs computed once per training run: grain-filter channels and loss weight maps."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from emseg._progress import progress_bar
from emseg.data import IGNORE_INDEX, add_grain_channels, centre_slice, load_training_data, weight_maps_for_slices
from emseg.io import atomic_output, open_image

logger = logging.getLogger(__name__)

__all__ = ["WEIGHT_CACHE", "add_grain_channels", "centre_slice", "weight_maps", "with_grain_channels", "write_weight_maps"]

WEIGHT_CACHE = "weight_maps.npz"


def _key(spec: dict[str, Any], labels: list[np.ndarray]) -> str:
    h = hashlib.blake2b(json.dumps(spec, sort_keys=True).encode(), digest_size=16)
    for lab in labels:
        h.update(str(lab.shape).encode())
        h.update(np.ascontiguousarray(lab).tobytes())
    return h.hexdigest()


def weight_maps(spec: dict[str, Any], labels: list[np.ndarray], *, num_classes: int, cache_dir: Path | None = None,
                balance_from: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Weight maps of ``training.weight_map`` (``spec``: its ``model_dump()``), cached on disk in ``cache_dir``.

    The cache file holds a key (hash of the spec and the labels), so a changed
    configuration or data set recomputes the maps.
    """
    key = _key({**spec, "num_classes": num_classes}, labels + list(balance_from or []))
    path = None if cache_dir is None else Path(cache_dir) / WEIGHT_CACHE
    if path is not None and path.is_file():
        try:
            with np.load(path) as data:
                if str(data["key"]) == key:
                    logger.info("weight maps: reusing %s", path)
                    return [data[f"w{i}"] for i in range(len(labels))]
        except (OSError, KeyError, ValueError):
            logger.warning("weight map cache %s is unreadable; recomputing", path)
    options = {k: v for k, v in spec.items() if k != "kind"}
    maps = weight_maps_for_slices(labels, kind=spec["kind"], num_classes=num_classes, balance_from=balance_from,
                                  **options)
    if path is not None:
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, key=np.array(key), **{f"w{i}": m for i, m in enumerate(maps)})
    return maps


def write_weight_maps(config: Any, out: str | Path, *, every_entry: bool = False, overwrite: bool = False) -> list[Path]:
    """Write ``training.weight_map`` of the training label volumes as float32 TIFF, for viewing in Fiji.

    Each map has the shape ``(Z, Y, X)`` of its ``data.train`` entry's labels
    (every slice, not only the selected ones); class balance counts the
    configured training slices, as in training.  Unlabelled pixels get 0.

    Args:
        config: a validated :class:`~emseg.config.Config` with ``training.weight_map``.
        out: the TIFF to write; with ``every_entry``, entry ``i`` goes to ``<stem>_<i>.tif``.
        every_entry: one file per ``data.train`` entry instead of the first only.
        overwrite: replace existing files.

    Returns:
        The files written.
    """
    import tifffile

    if config.training.weight_map is None:
        raise ValueError("the configuration has no training.weight_map: add e.g. "
                         "weight_map: {kind: guay, class_balance: true} under training")
    out = Path(out)
    sources = config.data.train if every_entry else config.data.train[:1]
    paths = [out] if len(sources) == 1 and not every_entry else [
        out.with_name(f"{out.stem}_{i}{out.suffix or '.tif'}") for i in range(len(sources))]
    for path in paths:
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    train, _ = load_training_data(config)
    spec = config.training.weight_map.model_dump(mode="json")
    num_classes = len(config.data.classes)
    ignore = config.data.ignore_label
    for source, path in zip(sources, paths):
        with open_image(source.labels) as lab:
            volume = np.asarray(lab.array[...]).astype(np.int64)
        if ignore is not None:
            volume = np.where(volume == ignore, IGNORE_INDEX, volume)
        slices = [volume[z] for z in range(volume.shape[0])]
        maps = weight_maps(spec, slices, num_classes=num_classes, balance_from=train.labels)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            tifffile.imwrite(tmp, np.stack(maps).astype(np.float32), photometric="minisblack")
        logger.info("weight map %s: shape %s, range %.3g..%.3g", path, volume.shape,
                    min(float(m.min()) for m in maps), max(float(m.max()) for m in maps))
    return paths


def with_grain_channels(images: list[np.ndarray], areas: list[int], *, progress: bool = False) -> list[np.ndarray]:
    """:func:`add_grain_channels` of every training slice, computed once (a progress bar for the slow part)."""
    if not areas:
        return [add_grain_channels(im, areas) for im in images]

    logger.info("grain filter %s: %d slices (tree of shapes, once per slice)", areas, len(images))
    out = []
    with progress_bar("Grain filter", total=len(images), enabled=progress) as advance:
        for im in images:
            out.append(add_grain_channels(im, areas))
            advance(1)
    return out

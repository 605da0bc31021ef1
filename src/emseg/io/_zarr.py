"""zarr backend (formats 2 and 3, local stores): ``store.zarr`` or ``store.zarr/path/in/store``."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_output
from ._base import (
    ImageData,
    ImageReaderWriter,
    Location,
    as_3d,
    format_error,
    voxel_size_from_attrs,
)
from ._chunks import default_chunks, iter_blocks
from ._ome_zarr import multiscales as _multiscales

logger = logging.getLogger(__name__)

_ZARR_PATH = re.compile(r"^(?P<file>.*?\.zarr)(?:[:/\\](?P<inner>.*))?$", re.IGNORECASE | re.DOTALL)
_META_FILES = ("zarr.json", ".zarray", ".zgroup")
_OME_UNIT_TO_NM = {"nanometer": 1.0, "micrometer": 1e3, "angstrom": 0.1, "millimeter": 1e6, "picometer": 1e-3}


def _node_kind(directory: Path) -> str | None:
    """'array', 'group' or None for a directory of a local zarr store."""
    if (directory / ".zarray").is_file():
        return "array"
    if (directory / ".zgroup").is_file():
        return "group"
    meta = directory / "zarr.json"
    if meta.is_file():
        try:
            return str(json.loads(meta.read_text()).get("node_type")) or None
        except (OSError, ValueError):
            return None
    return None


def store_format(store: Path) -> int | None:
    """zarr format (2 or 3) of an existing local store, or None if it cannot tell."""
    if (store / "zarr.json").is_file():
        return 3
    if (store / ".zgroup").is_file() or (store / ".zarray").is_file():
        return 2
    return None


def list_arrays(store: Path) -> list[str]:
    """Paths of all arrays in a local zarr store ('' for an array at the root), sorted."""
    found: list[str] = []
    for root, dirs, _files in os.walk(store):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # skip temporaries
        here = Path(root)
        if _node_kind(here) == "array":
            found.append(here.relative_to(store).as_posix() if here != store else "")
            dirs[:] = []  # chunk folders below
    return sorted(found)


def _ome_dataset(attrs: dict) -> tuple[str, tuple[float, float, float] | None] | None:
    """Highest-resolution dataset path and voxel size (nm) of an OME-Zarr multiscales group."""
    multiscales = _multiscales(attrs)
    if not multiscales:
        return None
    try:
        ms = multiscales[0]
        dataset = ms["datasets"][0]
        voxel_size = None
        scale = next(
            (t["scale"] for t in dataset.get("coordinateTransformations", []) if t.get("type") == "scale"),
            None,
        )
        axes = ms.get("axes") or []
        if scale is not None and len(scale) >= 3 and len(axes) == len(scale):
            spatial = [(s, a) for s, a in zip(scale, axes) if isinstance(a, dict) and a.get("type") == "space"]
            if len(spatial) == 3:
                factors = [_OME_UNIT_TO_NM.get(str(a.get("unit", ""))) for _, a in spatial]
                if all(f is not None for f in factors):
                    voxel_size = tuple(float(s) * f for (s, _), f in zip(spatial, factors))
        return str(dataset["path"]), voxel_size  # type: ignore[return-value]
    except (KeyError, IndexError, TypeError, ValueError):
        return None


class ZarrReaderWriter(ImageReaderWriter):
    """An array in a local zarr store (format 2 or 3).

    Address it as ``store.zarr`` (array at the store root, a group holding one
    array, or an OME-Zarr image whose highest resolution is used) or
    ``store.zarr/path/in/store``.  Reading returns the :class:`zarr.Array`
    itself (sliced natively, lazily).  Writing creates the store or adds the
    array to an existing store (keeping that store's format); the array is
    built under a hidden temporary name and renamed into place when complete.
    Voxel size is the ``voxel_size`` attribute in nm.
    """

    name = "zarr"
    description = "zarr v2/v3 (store.zarr or store.zarr/path/in/store; OME-Zarr highest resolution): read and write"
    suffixes = (".zarr",)
    can_write = True

    def parse(self, path: str) -> Location | None:
        match = _ZARR_PATH.match(path)
        if match is not None:
            return Location(original=path, file=Path(match["file"]), inner=(match["inner"] or "").strip("/\\"))
        p = Path(path)
        if p.is_dir() and any((p / m).is_file() for m in _META_FILES):
            return Location(original=path, file=p)
        return None

    def read(self, location: Location) -> ImageData:
        import zarr

        path, store, inner = location.original, location.file, location.inner
        if not store.is_dir():
            raise format_error(path, f"{store} is not a directory, so not a local zarr store")
        kind = _node_kind(store / inner) if inner else _node_kind(store)
        voxel_size = None
        if kind == "group" or (kind is None and not inner):
            try:
                group = zarr.open_group(store=str(store), path=inner or None, mode="r")
                ome = _ome_dataset(group.attrs.asdict())
            except Exception:  # noqa: BLE001 - e.g. a v2 store without root .zgroup
                ome = None
            arrays = list_arrays(store / inner) if (store / inner).is_dir() else []
            if ome is not None:
                sub, voxel_size = ome
            elif len(arrays) == 1:
                sub = arrays[0]
            else:
                where = f"group '{inner}'" if inner else "the store root"
                raise format_error(
                    path,
                    f"{where} is a group holding {len(arrays)} arrays; name one as "
                    f"'{store}/<array>'. Arrays in the store: {list_arrays(store)}",
                )
            inner = f"{inner}/{sub}".strip("/") if inner else sub
        try:
            array = zarr.open_array(store=str(store), path=inner or None, mode="r")
        except Exception as exc:  # noqa: BLE001 - zarr raises several types for a missing node
            raise format_error(
                path,
                f"no array at '{inner or '/'}' in {store}. Arrays in the store: {list_arrays(store)}",
            ) from exc
        array3, is_2d = as_3d(array, path)
        if voxel_size is None:
            voxel_size = voxel_size_from_attrs(array.attrs)
        return ImageData(array=array3, path=path, format=self.name, is_2d=is_2d, voxel_size=voxel_size)

    def write(
        self,
        location: Location,
        array: Any,
        *,
        chunks: tuple[int, ...] | None,
        voxel_size: tuple[float, float, float] | None,
        overwrite: bool,
        zarr_format: int,
    ) -> None:
        import zarr

        store, inner = location.file, location.inner
        chunks = tuple(chunks) if chunks is not None else default_chunks(array.shape)
        attributes = {}
        if voxel_size is not None:
            attributes = {"voxel_size": [float(v) for v in voxel_size], "voxel_size_unit": "nm"}

        def create_at(directory: Path, fmt: int) -> None:
            out = zarr.create_array(
                store=str(directory),
                shape=array.shape,
                dtype=array.dtype,
                chunks=tuple(max(1, min(c, s)) for c, s in zip(chunks, array.shape)),
                zarr_format=fmt,
                attributes=attributes,
            )
            for block in iter_blocks(array.shape, chunks):
                out[block] = np.asarray(array[block])

        if not inner or not store.exists():
            if store.exists() and not overwrite:
                raise FileExistsError(f"{store} already exists; pass overwrite=True to replace it")
            with atomic_output(store, overwrite=True) as tmp:
                if inner:
                    root = zarr.open_group(store=str(tmp), mode="w", zarr_format=zarr_format)
                    _require_groups(root, inner.rpartition("/")[0])
                    create_at(tmp / inner, zarr_format)
                else:
                    create_at(tmp, zarr_format)
            return

        # Add an array to an existing store, keeping the store's format.
        if not store.is_dir():
            raise format_error(str(store), "exists but is not a directory, so not a local zarr store")
        fmt = store_format(store) or zarr_format
        if fmt != zarr_format:
            logger.info("%s is a zarr v%d store; writing %s as v%d", store, fmt, inner, fmt)
        target = store / inner
        if target.exists() and not overwrite:
            raise FileExistsError(f"{location.original} already exists; pass overwrite=True to replace it")
        root = zarr.open_group(store=str(store), mode="a", zarr_format=fmt)
        _require_groups(root, inner.rpartition("/")[0])
        with atomic_output(target, overwrite=True) as tmp:
            create_at(tmp, fmt)
        logger.debug("wrote %s shape=%s dtype=%s", location.original, array.shape, array.dtype)


def _require_groups(root: Any, group_path: str) -> Any:
    group = root
    for part in [p for p in group_path.split("/") if p]:
        group = group.require_group(part)
    return group

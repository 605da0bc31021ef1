"""N5 backend (read-only): ``volume.n5/path/to/dataset``.

zarr-python 3 has no N5 store, so this is a small reader of the documented N5
format (https://github.com/saalfeldlab/n5, "file system specification"):

* a dataset is a folder with ``attributes.json`` holding ``dimensions``,
  ``blockSize`` (both fastest axis first: x, y, z), ``dataType`` and
  ``compression`` (``{"type": "raw" | "gzip" | "bzip2" | "xz" | "blosc"}``, or the
  older ``compressionType``);
* block ``(i, j, k)`` (x, y, z block indices) is the file ``<dataset>/i/j/k``: a
  big-endian header (uint16 mode, uint16 number of dimensions, one uint32 size
  per dimension, plus a uint32 element count when mode is 1) followed by the
  compressed big-endian elements, x fastest; border blocks may be smaller;
* a missing block reads as zeros.
"""

from __future__ import annotations

import bz2
import json
import lzma
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ._base import ImageData, ImageReaderWriter, Location, _LazyArrayBase, _split_key, as_3d, format_error

__all__ = ["N5Array", "N5Reader"]

_N5_PATH = re.compile(r"^(?P<file>.*?\.n5)(?:[:/\\](?P<inner>.*))?$", re.IGNORECASE | re.DOTALL)
_DTYPES = {"uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64"}


def _decompress(raw: bytes, compression: dict[str, Any], path: Path) -> bytes:
    kind = str(compression.get("type", "raw")).lower()
    if kind == "raw":
        return raw
    if kind == "gzip":
        return zlib.decompress(raw, wbits=47)  # 32 + 15: gzip or zlib header, detected
    if kind == "bzip2":
        return bz2.decompress(raw)
    if kind == "xz":
        return lzma.decompress(raw)
    if kind == "blosc":
        from numcodecs import Blosc

        return bytes(Blosc().decode(raw))
    raise format_error(str(path), f"N5 compression {kind!r} is not supported (raw, gzip, bzip2, xz, blosc)")


class N5Array(_LazyArrayBase):
    """A lazy N5 dataset as a numpy-style array in C order (``(Z, Y, X)`` for 3-D)."""

    def __init__(self, folder: Path):
        attrs = json.loads((folder / "attributes.json").read_text())
        self.folder = folder
        self.attrs = attrs
        dims, block = attrs.get("dimensions"), attrs.get("blockSize")
        dtype = str(attrs.get("dataType", ""))
        if not dims or not block or dtype not in _DTYPES:
            raise format_error(str(folder), "attributes.json lacks dimensions/blockSize/dataType of an N5 dataset")
        self.shape = tuple(int(d) for d in reversed(dims))
        self.block = tuple(int(b) for b in reversed(block))
        self.dtype = np.dtype(dtype)
        self.compression = attrs.get("compression") or {"type": attrs.get("compressionType", "raw")}

    def _read_block(self, index: tuple[int, ...]) -> np.ndarray | None:
        path = self.folder.joinpath(*(str(i) for i in reversed(index)))
        if not path.is_file():
            return None
        raw = path.read_bytes()
        mode, ndim = struct.unpack(">HH", raw[:4])
        sizes = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        offset = 4 + 4 * ndim + (4 if mode == 1 else 0)
        data = _decompress(raw[offset:], self.compression, path)
        shape = tuple(reversed(sizes))
        count = int(np.prod(shape))
        return np.frombuffer(data, dtype=self.dtype.newbyteorder(">"), count=count).reshape(shape).astype(self.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _split_key(key, len(self.shape))
        bounds, post = [], []
        for k, size in zip(key, self.shape):
            if isinstance(k, (int, np.integer)):
                i = int(k) + size if int(k) < 0 else int(k)
                if not 0 <= i < size:
                    raise IndexError(f"index {k} is out of bounds for axis with size {size}")
                bounds.append((i, i + 1))
                post.append(0)
            elif isinstance(k, slice):
                start, stop, step = k.indices(size)
                if step == 1:
                    bounds.append((start, max(start, stop)))
                    post.append(slice(None))
                else:
                    bounds.append((0, size))
                    post.append(k)
            else:
                bounds.append((0, size))
                post.append(k)
        out = np.zeros(tuple(b - a for a, b in bounds), self.dtype)
        if out.size:
            ranges = [range(a // bs, (b - 1) // bs + 1) for (a, b), bs in zip(bounds, self.block)]
            for index in np.ndindex(*(len(r) for r in ranges)):
                bidx = tuple(r[i] for r, i in zip(ranges, index))
                data = self._read_block(bidx)
                if data is None:
                    continue
                src, dst = [], []
                for bi, bs, (a, b), n in zip(bidx, self.block, bounds, data.shape):
                    lo, hi = max(a, bi * bs), min(b, bi * bs + n)
                    src.append(slice(lo - bi * bs, hi - bi * bs))
                    dst.append(slice(lo - a, hi - a))
                out[tuple(dst)] = data[tuple(src)]
        return out[tuple(post)]


class N5Reader(ImageReaderWriter):
    """A dataset in an N5 container, ``volume.n5/path/to/dataset`` (read lazily, block by block)."""

    name = "n5"
    description = "N5 (volume.n5/path/to/dataset; raw, gzip, bzip2, xz, blosc blocks): read"
    suffixes = (".n5",)
    can_write = False

    def parse(self, path: str) -> Location | None:
        match = _N5_PATH.match(path)
        if match is None:
            return None
        return Location(original=path, file=Path(match["file"]), inner=(match["inner"] or "").strip("/\\"))

    def read(self, location: Location) -> ImageData:
        folder = location.file / location.inner if location.inner else location.file
        if not (folder / "attributes.json").is_file() or '"dimensions"' not in (folder / "attributes.json").read_text():
            datasets = sorted(p.parent.relative_to(location.file).as_posix() for p in location.file.rglob("attributes.json")
                              if "dimensions" in p.read_text())
            if not location.inner and len(datasets) == 1:
                folder = location.file / datasets[0]
            else:
                raise format_error(location.original, f"no N5 dataset at '{location.inner or '/'}'; "
                                                      f"datasets in {location.file}: {datasets}")
        try:
            array = N5Array(folder)
        except (OSError, ValueError) as err:
            raise format_error(location.original, f"cannot read N5 dataset attributes ({err})") from err
        if "dimensions" not in array.attrs:
            raise format_error(location.original, "not an N5 dataset")
        array3, is_2d = as_3d(array, location.original)
        voxel_size = None
        res = array.attrs.get("resolution") or (array.attrs.get("pixelResolution") or {}).get("dimensions")
        if isinstance(res, list) and len(res) == 3 and not is_2d:
            voxel_size = tuple(float(r) for r in reversed(res))
        return ImageData(array=array3, path=location.original, format=self.name, is_2d=is_2d, voxel_size=voxel_size)

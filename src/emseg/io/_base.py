"""The reader/writer contract shared by every image backend.

Every backend turns a file into an :class:`ImageData` whose ``array`` is a lazy,
numpy-style indexable array in ``(Z, Y, X)`` order, and writes ``(Y, X)`` or
``(Z, Y, X)`` arrays back.  The rest of emseg sees arrays, never file types.
"""

from __future__ import annotations

import abc
import errno
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._chunks import positive_tuple

logger = logging.getLogger(__name__)

__all__ = [
    "ImageData",
    "ImageFormatError",
    "ImageReaderWriter",
    "Location",
    "SliceStack",
    "View3D",
    "as_3d",
    "damaged_file_error",
    "format_error",
    "missing_file_error",
    "normalize_voxel_size",
    "voxel_size_from_attrs",
]


class ImageFormatError(ValueError):
    """A path names an unknown format, an unreadable file or a missing dataset.

    The message names the path, the problem and the formats understood
    (see :func:`emseg.io.supported_formats`).
    """


#: One line per format understood, in the order :func:`emseg.io.supported_formats` lists them: filled by
#: the registry when it is imported (it sits above the backends and this module, so nothing here imports it).
_FORMAT_LINES: list[str] = []


def set_format_lines(lines: Sequence[str]) -> None:
    """Called once by ``emseg.io._registry``: the formats every error message lists."""
    _FORMAT_LINES[:] = list(lines)


def _formats_text() -> str:
    return "Formats understood:\n" + "\n".join(f"  - {line}" for line in _FORMAT_LINES)


def format_error(path: str | os.PathLike, problem: str) -> ImageFormatError:
    """Build an :class:`ImageFormatError` naming ``path``, ``problem`` and the formats understood."""
    return ImageFormatError(f"{os.fspath(path)!s}: {problem}\n{_formats_text()}")


def damaged_file_error(path: str | os.PathLike, problem: str) -> ImageFormatError:
    """Build an :class:`ImageFormatError` for a file that parses but cannot be read to the end.

    The message names ``path``, the ``problem`` and the fix (a truncated copy or export is the usual cause).
    """
    return ImageFormatError(f"{os.fspath(path)!s}: {problem}: the file is truncated or damaged; "
                            "re-export or re-copy it")


def missing_file_error(path: str | os.PathLike, missing: str | os.PathLike | None = None) -> FileNotFoundError:
    """Build a :class:`FileNotFoundError` naming the path (and the part missing) and the formats understood."""
    path = os.fspath(path)
    what = path if missing is None or os.fspath(missing) == path else f"{os.fspath(missing)} (from {path})"
    return FileNotFoundError(errno.ENOENT, f"No such file or directory: {what}\n{_formats_text()}")


def normalize_voxel_size(value: Any, *, name: str = "voxel_size") -> tuple[float, float, float] | None:
    """Validate a user voxel size: ``None`` or three positive numbers ``(z, y, x)`` in nm.

    Raises:
        ValueError: naming ``name``, the value received and the value expected.
    """
    return positive_tuple(value, name=name, count=3, kind=float, meaning="(z, y, x) in nm")


def voxel_size_from_attrs(attrs: Any) -> tuple[float, float, float] | None:
    """Read ``voxel_size`` (or CREMI-style ``resolution``) from zarr/HDF5 attributes, in nm."""
    for key in ("voxel_size", "resolution"):
        try:
            value = attrs.get(key) if hasattr(attrs, "get") else None
        except Exception:  # noqa: BLE001 - odd attribute types should not stop reading
            value = None
        if value is None:
            continue
        try:
            values = tuple(float(v) for v in np.asarray(value).ravel())
        except (TypeError, ValueError):
            logger.debug("ignoring attribute %r=%r: not numeric", key, value)
            continue
        if len(values) == 3 and all(np.isfinite(v) and v > 0 for v in values):
            return values  # type: ignore[return-value]
        logger.debug("ignoring attribute %r=%r: expected three positive numbers (z, y, x)", key, value)
    return None


@dataclass(frozen=True)
class Location:
    """A user path split into the file on disk and the path inside it.

    Attributes:
        original: the path exactly as the user gave it.
        file: the file or directory on disk (an HDF5 file, a zarr store, a TIFF, ...).
        inner: the dataset path inside a container ('' when none was given).
    """

    original: str
    file: Path
    inner: str = ""


@dataclass
class ImageData:
    """An opened image or volume.

    Attributes:
        array: lazy, numpy-style indexable array, always 3-D ``(Z, Y, X)``; a
            2-D image has ``Z == 1``.  It supports ``.shape``, ``.dtype``,
            ``.ndim``, slicing ``array[z0:z1, y0:y1, x0:x1] -> np.ndarray``,
            ``array[z] -> (Y, X) np.ndarray`` and ``np.asarray(array)``.
            Taking a patch does not load the whole volume.  It stays valid
            until :meth:`close`.
        path: the path as given by the user (including ``:dataset`` or ``/inner/path``).
        format: backend name, e.g. ``"tiff"``, ``"png-folder"``, ``"hdf5"``,
            ``"zarr"``, ``"mrc"``, ``"png"``.
        is_2d: True if the file held a single 2-D image (writers can write 2-D back).
        voxel_size: ``(z, y, x)`` in nm when the file says so, else None.
    """

    array: Any
    path: str
    format: str
    is_2d: bool
    voxel_size: tuple[float, float, float] | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape ``(Z, Y, X)`` of :attr:`array`."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        """Data type of :attr:`array`, as stored in the file."""
        return np.dtype(self.array.dtype)

    def close(self) -> None:
        """Close the file handles held by :attr:`array` (HDF5 files, TIFF and MRC handles)."""
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception:  # noqa: BLE001 - closing must not mask the real error
                logger.debug("error while closing %s", self.path, exc_info=True)

    def __enter__(self) -> ImageData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageReaderWriter(abc.ABC):
    """Contract for one file-format backend.

    Reading (:meth:`read`) returns an :class:`ImageData` whose ``array``

    * has axis order ``(Z, Y, X)`` and is always 3-D (a 2-D image gets ``Z = 1``
      and ``is_2d = True``);
    * keeps the dtype stored in the file (no rescaling or casting);
    * is lazy: slicing reads only the chunks, pages or slices needed;

    and fills the metadata ``voxel_size`` (``(z, y, x)`` in nm, or None) and
    ``format`` (:attr:`name`).

    Writing (:meth:`write`) takes ``(Y, X)`` or ``(Z, Y, X)`` arrays, preserves
    their dtype where the format allows, stores ``voxel_size`` when given, and
    is atomic (see :class:`emseg.io.atomic_output`).

    Attributes:
        name: short format name returned in :attr:`ImageData.format`.
        description: one human-readable line for :func:`emseg.io.supported_formats`.
        suffixes: lower-case file suffixes the backend claims, e.g. ``(".tif", ".tiff")``.
        can_write: whether :meth:`write` is implemented.
    """

    name: str = ""
    description: str = ""
    suffixes: tuple[str, ...] = ()
    can_write: bool = False

    def parse(self, path: str) -> Location | None:
        """Return the :class:`Location` for ``path`` if this backend claims it, else None.

        The default claims paths whose suffix is in :attr:`suffixes`.
        """
        p = Path(path)
        if p.suffix.lower() in self.suffixes:
            return Location(original=path, file=p)
        return None

    @abc.abstractmethod
    def read(self, location: Location) -> ImageData:
        """Open ``location`` lazily and return an :class:`ImageData` with a ``(Z, Y, X)`` array."""

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
        """Write a ``(Y, X)`` or ``(Z, Y, X)`` array to ``location`` atomically."""
        raise format_error(location.original, f"writing {self.name} is not supported")


# --------------------------------------------------------------------------- lazy arrays


def _split_key(key: Any, ndim: int = 3) -> tuple[Any, ...]:
    """Expand an index to exactly ``ndim`` entries (handles Ellipsis and short keys)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is None for k in key):
        raise IndexError("np.newaxis is not supported when indexing a lazy image array")
    n_ellipsis = sum(1 for k in key if k is Ellipsis)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_ellipsis == 1:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = ndim - (len(key) - 1)
        key = key[:i] + (slice(None),) * fill + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices for a {ndim}-D array: {len(key)} were given")
    return key + (slice(None),) * (ndim - len(key))


class _LazyArrayBase:
    """Numpy-compatible basics shared by the lazy wrappers below."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[...]
        if dtype is not None and np.dtype(dtype) != out.dtype:
            out = out.astype(dtype)
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} shape={self.shape} dtype={np.dtype(self.dtype)}>"


class SliceStack(_LazyArrayBase):
    """A lazy ``(Z, Y, X)`` stack read one 2-D slice at a time.

    Used for TIFF pages and folders of slices: indexing reads only the slices
    selected along Z.

    Args:
        shape: ``(Z, Y, X)``.
        dtype: data type of every slice.
        read_slices: callable taking a list of z indices and returning an
            ``(len(zs), Y, X)`` array.
    """

    #: Any crop decodes its whole slices: a reader drawing many crops may keep whole slices instead.
    reads_whole_slices = True

    def __init__(self, shape: Sequence[int], dtype: Any, read_slices: Callable[[list[int]], np.ndarray]):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._read_slices = read_slices

    def __getitem__(self, key: Any) -> np.ndarray:
        kz, ky, kx = _split_key(key)
        nz = self.shape[0]
        if isinstance(kz, (int, np.integer)):
            z = int(kz)
            if not -nz <= z < nz:
                raise IndexError(f"index {z} is out of bounds for axis 0 with size {nz}")
            zs, drop = [z % nz], True
        elif isinstance(kz, slice):
            zs, drop = list(range(*kz.indices(nz))), False
        else:
            idx = np.asarray(kz)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            if idx.ndim != 1:
                raise IndexError("only 1-D integer or boolean arrays are supported along Z")
            if idx.size and (idx.min() < -nz or idx.max() >= nz):
                raise IndexError(f"index out of bounds for axis 0 with size {nz}")
            zs, drop = [int(i) % nz for i in idx], False
        if zs:
            data = np.asarray(self._read_slices(zs))
        else:
            data = np.empty((0,) + self.shape[1:], dtype=self.dtype)
        return data[(0 if drop else slice(None), ky, kx)]


class View3D(_LazyArrayBase):
    """Present a lazy 2-D array, or one with leading singleton axes, as ``(Z, Y, X)``.

    A ``(Y, X)`` array becomes ``(1, Y, X)``; an array like ``(1, 1, Z, Y, X)``
    (OME-Zarr) becomes ``(Z, Y, X)``.  Indexing stays lazy.
    """

    def __init__(self, base: Any):
        self.base = base
        shape = tuple(int(s) for s in base.shape)
        self._extra = len(shape) - 3
        self.shape = (1,) + shape if self._extra < 0 else shape[self._extra :]
        self.dtype = np.dtype(base.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        kz, ky, kx = _split_key(key)
        if self._extra >= 0:
            return np.asarray(self.base[(0,) * self._extra + (kz, ky, kx)])
        sub = np.asarray(self.base[(ky, kx)])[np.newaxis]
        return sub[(kz,) + (slice(None),) * (sub.ndim - 1)]


def as_3d(array: Any, path: str) -> tuple[Any, bool]:
    """Return ``(array_zyx, is_2d)`` for a lazy array of any supported dimensionality.

    Raises:
        ImageFormatError: if the array has fewer than 2 dimensions, or more than
            3 that are not leading singletons (e.g. channels or time).
    """
    shape = tuple(int(s) for s in array.shape)
    if len(shape) == 3:
        return array, False
    if len(shape) == 2:
        return View3D(array), True
    if len(shape) > 3 and all(s == 1 for s in shape[:-3]):
        return View3D(array), False
    raise format_error(
        path,
        f"the array has shape {shape}; emseg reads single-channel 2-D (Y, X) or 3-D (Z, Y, X) "
        "images (leading axes of size 1 are dropped)",
    )

"""Checks made before any prediction work, and clear messages when writing an output fails.

Everything here runs before a model is loaded or a voxel predicted, so a bad command costs nothing
and leaves nothing behind: outputs that would overwrite an input or each other, output folders that
cannot be written, option values out of range, and float images holding NaN or inf.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from emseg.io import resolve_location as resolve

__all__ = ["OutputWriteError", "check_distinct_paths", "check_finite", "check_options", "check_writable",
           "image_location", "write_failure"]

#: Bytes of input read at a time when scanning a float image for NaN/inf.
SCAN_BYTES = 64 * 2**20


class OutputWriteError(OSError):
    """Writing an output failed; the message names the output, the cause, the fix and what was kept."""


def _os_error(cls: type[OSError], code: int | None, message: str) -> OSError:
    """``cls(message)`` carrying ``errno`` ``code``, printed as the message alone (no ``[Errno n]``)."""
    err = cls(message)
    err.errno = code
    return err


def image_location(path: str | os.PathLike) -> tuple[Path, tuple[str, ...]]:
    """``(file on disk, resolved; path inside it as parts)`` of an image path (``vol.h5:raw``, ``s.zarr/a``)."""
    text = os.fspath(path)
    found = resolve(text)
    if found is None:
        return Path(text).resolve(), ()
    location = found[1]
    inner = tuple(p for p in PurePosixPath(location.inner.replace("\\", "/")).parts if p not in ("", "/"))
    return Path(location.file).resolve(), inner


def _same_file(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _overlap(a: str | os.PathLike, b: str | os.PathLike) -> str | None:
    """How writing image path ``a`` would replace or alter image path ``b``: ``"is"`` (the same file or
    dataset, links seen through), ``"is inside"`` (an array in a store, a file in a folder of slices),
    ``"holds"`` (a store or file holding ``b``), or None."""
    (fa, ia), (fb, ib) = image_location(a), image_location(b)
    if _same_file(fa, fb):
        na, nb = PurePosixPath("/", *ia), PurePosixPath("/", *ib)
    else:
        na, nb = fa.joinpath(*ia), fb.joinpath(*ib)
    if na == nb:
        return "is"
    if nb in na.parents:
        return "is inside"
    if na in nb.parents:
        return "holds"
    return None


def _suggest(path: str | os.PathLike, tag: str, *avoid: str | os.PathLike) -> str:
    """``, e.g. <path with tag before its suffix>`` if that path clashes with none of ``avoid``, else ``""``."""
    p = Path(os.fspath(path))
    suffix = p.suffix
    other = str(p.with_name(p.name[: len(p.name) - len(suffix)] + tag + suffix))
    return "" if any(_overlap(other, a) for a in avoid) else f", e.g. {other}"


def check_distinct_paths(image: str | os.PathLike, output: str | os.PathLike,
                         probabilities: str | os.PathLike | None = None) -> None:
    """Refuse outputs that are the input image, inside it, or the same as each other.

    Paths are compared resolved (symbolic and hard links, ``./`` and ``..`` see through), with the
    dataset inside an HDF5 file or zarr store: ``raw.zarr/labels`` next to input ``raw.zarr/raw`` is
    fine, output ``raw.zarr`` (the whole store) is not. ``--overwrite`` does not lift this.

    Raises:
        ValueError: naming both paths and what to do.
    """
    outputs = [("labels output", output, "_labels")]
    if probabilities is not None:
        outputs.append(("--probabilities output", probabilities, "_probabilities"))
    for what, path, tag in outputs:
        relation = _overlap(path, image)
        if relation:
            harm = {"is": "writing it would replace the raw data", "holds": "replacing it would delete the raw data",
                    "is inside": "writing it would change the input"}[relation]
            raise ValueError(
                f"the {what} {os.fspath(path)} {relation} the input image {os.fspath(image)}: {harm}, even with "
                f"--overwrite. Choose another path{_suggest(path, tag, image)}")
    relation = _overlap(probabilities, output) if probabilities is not None else None
    if relation:
        raise ValueError(
            f"--probabilities {os.fspath(probabilities)} {relation} the labels output {os.fspath(output)}: one "
            f"would overwrite the other. Give the probabilities a path of their own"
            f"{_suggest(probabilities, '_probabilities', image, output)}")


def check_writable(path: str | os.PathLike, what: str = "output") -> None:
    """Make sure files can be created where ``path`` will be written, before any work.

    Creates (and removes) a temporary file in the nearest existing folder on the way to ``path``: the
    check that holds whatever the permissions model (as root ``chmod`` does not stop writes; a
    read-only mount or a path through a regular file does).

    Raises:
        NotADirectoryError: a component of the path is a file.
        PermissionError / OSError: the folder refuses new files (the message says which and why).
    """
    target, inner = image_location(path)
    folder = target if (inner and target.is_dir()) else target.parent  # an array added to a zarr store
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise _os_error(NotADirectoryError, errno.ENOTDIR, f"cannot write the {what} {os.fspath(path)}: {folder} "
                                                           "is a file, not a folder; choose another output path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".emseg-write-check-", dir=folder)
    except OSError as err:
        raise _os_error(type(err), err.errno, f"cannot write the {what} {os.fspath(path)}: no file can be created "
                                              f"in {folder} ({err.strerror}); choose another folder, or make this "
                                              "one writable") from None
    os.close(fd)
    os.unlink(probe)


def write_failure(err: OSError, path: str | os.PathLike, what: str, *, kept: str = "") -> OutputWriteError:
    """An :class:`OutputWriteError` naming the output ``path`` and the fix, from the error raised writing it;
    ``err`` itself if it is one already."""
    if isinstance(err, OutputWriteError):
        return err
    where = image_location(path)[0].parent
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        problem = f"no space left on the device holding {where} ({err.strerror})"
        fix = "free space there or choose another folder for it"
    else:
        problem = err.strerror or str(err)
        fix = "choose another folder for it"
    message = f"cannot write the {what} {os.fspath(path)}: {problem}; {fix}" + (f". {kept}" if kept else "")
    return _os_error(OutputWriteError, err.errno, message)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_options(*, window: Any = None, batch_size: Any = None, workers: Any = None, threads: Any = None) -> None:
    """Range checks of the prediction options (``None``: not given), before any work.

    Raises:
        ValueError: naming the option (API name and CLI flag), the value and what is allowed.
    """
    if window is not None:
        values = tuple(window) if isinstance(window, (tuple, list)) else (window,)
        if len(values) != 2 or not all(_is_int(v) and v >= 1 for v in values):
            raise ValueError(f"window (--window Y X) must be two positive whole numbers of pixels, got {window!r}; "
                             "leave it out to use the model's window")
    if batch_size is not None and not (_is_int(batch_size) and batch_size >= 1):
        raise ValueError(f"batch_size (--batch-size) must be a whole number of windows per forward pass, at least 1, "
                         f"got {batch_size!r}")
    if workers is not None and not (_is_int(workers) and workers >= 0):
        raise ValueError(f"workers (--workers) must be 0 (predict in this process) or a number of Dask worker "
                         f"processes, at least 1; got {workers!r}")
    if threads is not None and not (_is_int(threads) and threads >= 1):
        raise ValueError(f"threads must be at least 1 (--threads: torch threads per block), got {threads!r}")


def check_finite(array: Any, image: str | os.PathLike) -> None:
    """Refuse a float image holding NaN or inf (they spread through the network's convolutions).

    Integer images cannot hold them and are not read.  Float images are read once, in slabs of
    about :data:`SCAN_BYTES`, before any prediction.

    Raises:
        ValueError: naming the file, how many voxels are not finite, the first slice holding one, and the fix.
    """
    dtype = np.dtype(array.dtype)
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.complexfloating)):
        return
    shape = tuple(int(s) for s in array.shape)
    step = max(1, SCAN_BYTES // max(1, int(np.prod(shape[1:])) * dtype.itemsize))
    count, first = 0, None
    for z0 in range(0, shape[0], step):
        bad = ~np.isfinite(np.asarray(array[z0:z0 + step]))
        n = int(np.count_nonzero(bad))
        if n and first is None:
            first = z0 + int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
        count += n
    if count:
        total = int(np.prod(shape))
        raise ValueError(
            f"{os.fspath(image)}: {count:,} of {total:,} voxels are not finite numbers (NaN or inf), the first in "
            f"slice z={first}; the network cannot segment them and they would spoil the labels around them. "
            "Replace them (e.g. numpy.nan_to_num, or the image's mean) or crop them out, then predict again")

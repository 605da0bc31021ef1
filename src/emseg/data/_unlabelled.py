"""Random patches of unlabelled images and volumes, read lazily (pretraining, semi-supervised training)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from emseg.data._load import DataError
from emseg.data._normalize import Normalizer
from emseg.data._slices import parse_slices
from emseg.io import open_image

logger = logging.getLogger(__name__)

__all__ = ["SLICE_CACHE_BYTES", "UnlabelledVolumes"]

#: Decoded slices of page-based inputs (TIFF pages, folders of slices: any crop of them decodes its whole
#: slice) kept for later patches, least recently used first out.  Compressed pages cost 2-30 ms each to
#: decode (deflate to LZMA, 768 x 1024), several times a training step's data on a GPU.
SLICE_CACHE_BYTES = 256 * 2**20


class UnlabelledVolumes:
    """Draw random raw patches from several unlabelled images or volumes without loading them whole.

    Each source is opened lazily (:func:`emseg.io.open_image`: TIFF, PNG folders, HDF5, zarr, N5, MRC);
    only the patches drawn are read.  Page-based inputs (TIFF, folders of slices), which decode a whole
    slice for any crop, keep the decoded slices for later patches, up to :data:`SLICE_CACHE_BYTES` in all.
    A patch of a 2-D network is ``(C, Y, X)`` with ``C = context`` slices centred on a selected slice (edge
    slices repeated); a patch of a 3-D network is ``(1, Z, Y, X)`` with all ``Z`` slices inside the
    selected ones (a contiguous run).

    Args:
        sources: ``(path, slices)`` pairs; ``slices`` as in the configuration (``"0:24"``, ``None`` = all).
        patch_size: ``(Y, X)`` or ``(Z, Y, X)`` (3-D).
        context: slices per 2-D patch (``model.context_slices``).

    Raises:
        DataError: a file cannot be read, the selection is invalid, a volume is smaller than the patch or
            has no contiguous run of ``Z`` selected slices; the message names the file and the fix.
    """

    def __init__(self, sources: Sequence[tuple[str, str | None]], *, patch_size: Sequence[int],
                 context: int = 1, key: str = "data.unlabelled") -> None:
        if not sources:
            raise DataError(f"{key}: no unlabelled images given; list at least one {{image: PATH}}")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.context = int(context)
        self.volumes: list[Any] = []
        self.paths: list[str] = []
        self.starts: list[np.ndarray] = []  # per volume: the z (2-D) or first z (3-D) a patch may take
        self._selections: list[str | None] = []
        self._slices: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()  # (source, z) -> decoded slice
        self._slice_bytes = 0
        depth = self.patch_size[0] if len(self.patch_size) == 3 else 1
        try:
            for i, (path, slices) in enumerate(sources):
                try:
                    image = open_image(path)
                except (OSError, ValueError) as err:
                    raise DataError(f"{key}[{i}]: {err}") from None
                self.volumes.append(image)
                shape = tuple(image.array.shape)
                try:
                    zs = parse_slices(slices, shape[0])
                except ValueError as err:
                    raise DataError(f"{key}[{i}].slices: {err} ({path})") from None
                if shape[1] < self.patch_size[-2] or shape[2] < self.patch_size[-1]:
                    raise DataError(f"{key}[{i}]: {path} is {shape[1]} x {shape[2]} pixels (y, x), smaller than the "
                                    f"patch {list(self.patch_size)}; lower the patch_size")
                chosen = set(zs)
                starts = [z for z in zs if all(z + k in chosen for k in range(depth))]
                if not starts:
                    raise DataError(f"{key}[{i}]: {path} has no run of {depth} consecutive selected slices for a "
                                    f"patch of depth {depth}; select more slices or lower the patch depth")
                self.paths.append(str(path))
                self.starts.append(np.asarray(starts, dtype=np.int64))
                self._selections.append(slices)
        except BaseException:
            self.close()
            raise
        counts = np.array([len(s) for s in self.starts], dtype=np.float64)
        self._volume_p = counts / counts.sum()

    def close(self) -> None:
        self._slices.clear()
        self._slice_bytes = 0
        for image in self.volumes:
            image.close()

    def __enter__(self) -> UnlabelledVolumes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def num_slices(self) -> int:
        """Selected slices (2-D) or patch start positions (3-D) over all sources."""
        return int(sum(len(s) for s in self.starts))

    def _patch(self, v: int, z: int, y: int, x: int) -> np.ndarray:
        array = self.volumes[v].array
        py, px = self.patch_size[-2:]
        three_d = len(self.patch_size) == 3
        if three_d or self.context == 1:
            zs = np.arange(z, z + (self.patch_size[0] if three_d else 1))
        else:  # 2.5-D: context slices centred on z, edge slices repeated
            half = self.context // 2
            zs = np.clip(np.arange(z - half, z + half + 1), 0, array.shape[0] - 1)
        if getattr(array, "reads_whole_slices", False) and SLICE_CACHE_BYTES > 0:
            out = np.stack([self._slice(v, int(k))[y:y + py, x:x + px] for k in zs])
        elif three_d or self.context == 1:  # one read of a contiguous run
            out = np.asarray(array[int(zs[0]):int(zs[-1]) + 1, y:y + py, x:x + px])
        else:
            out = np.stack([np.asarray(array[int(k):int(k) + 1, y:y + py, x:x + px])[0] for k in zs])
        return (out[None] if three_d else out).astype(np.float32)

    def _slice(self, v: int, z: int) -> np.ndarray:
        """Slice ``z`` of source ``v``, decoded once while it stays among the recently used ones."""
        key = (v, z)
        plane = self._slices.get(key)
        if plane is not None:
            self._slices.move_to_end(key)
            return plane
        plane = np.asarray(self.volumes[v].array[z])
        self._slices[key] = plane
        self._slice_bytes += plane.nbytes
        while self._slice_bytes > SLICE_CACHE_BYTES and len(self._slices) > 1:
            _, old = self._slices.popitem(last=False)
            self._slice_bytes -= old.nbytes
        return plane

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` random raw patches, ``(n, C, Y, X)`` (2-D) or ``(n, 1, Z, Y, X)`` (3-D), float32."""
        return self.sample_with_positions(n, rng)[0]

    def sample_with_positions(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, ...]]]:
        """:meth:`sample` and where each patch came from: ``(source index, z, y, x)`` of its first voxel."""
        out, where = [], []
        for _ in range(n):
            v = int(rng.choice(len(self.volumes), p=self._volume_p))
            z = int(rng.choice(self.starts[v]))
            shape = self.volumes[v].array.shape
            y = int(rng.integers(0, shape[1] - self.patch_size[-2] + 1))
            x = int(rng.integers(0, shape[2] - self.patch_size[-1] + 1))
            out.append(self._patch(v, z, y, x))
            where.append((v, z, y, x))
        return np.stack(out), where

    def fit_normalizer(self, rng: np.random.Generator, *, patches: int = 64) -> Normalizer:
        """Z-score statistics of ``patches`` random patches (the unlabelled data's intensities)."""
        sample = self.sample(patches, rng)
        return Normalizer.fit([sample])

    def describe(self) -> list[dict[str, Any]]:
        """What the data is: per source its path, selection, shape and dtype (recorded in checkpoints)."""
        return [{"image": p, "slices": s, "shape": list(map(int, v.array.shape)), "dtype": str(v.array.dtype),
                 "positions": int(len(st))}
                for p, s, v, st in zip(self.paths, self._selections, self.volumes, self.starts)]

"""Connected components of a label volume, block by block: labelling, additive moments per fragment,
fragments joined across block faces with a union-find (part of :func:`~emseg.analysis.measure_objects`)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

_CONNECTIVITY = {"3d": (6, 18, 26), "2d": (4, 8)}

# Additive moments per fragment, in this column order of the moment matrix.
_SUMS = ("n", "z", "y", "x", "zz", "yy", "xx", "zy", "zx", "yx", "i", "ii")
_N, _Z, _Y, _X, _ZZ, _YY, _XX, _ZY, _ZX, _YX, _I, _II = range(len(_SUMS))


# --------------------------------------------------------------------------- neighbourhoods


def _offsets(mode: str, connectivity: int) -> list[tuple[int, int, int]]:
    """Neighbour offsets ``(dz, dy, dx)`` of one voxel under ``connectivity``."""
    out = []
    for o in itertools.product((-1, 0, 1), repeat=3):
        taxicab = sum(abs(v) for v in o)
        if taxicab == 0:
            continue
        if mode == "2d":
            if o[0] != 0 or taxicab > (1 if connectivity == 4 else 2):
                continue
        elif taxicab > {6: 1, 18: 2, 26: 3}[connectivity]:
            continue
        out.append(o)
    return out


def _label(mask: np.ndarray, mode: str, connectivity: int) -> tuple[np.ndarray, int]:
    """Connected components of a 3-D mask with cc3d; 2-D mode labels each z-slice on its own."""
    if mode == "3d":
        return _cc(mask, connectivity)
    cc = np.zeros(mask.shape, np.uint32)
    n = 0
    for z in range(mask.shape[0]):
        if not mask[z].any():
            continue
        # A (1, Y, X) array with 6/18 is 4/8-connectivity in the plane; cc3d 4.1.1 mislabels some
        # plain 2-D arrays with connectivity=8 (labels on background pixels), so 2-D input is avoided.
        lab, k = _cc(mask[z:z + 1], 6 if connectivity == 4 else 18)
        cc[z] = np.where(lab[0] > 0, lab[0] + np.uint32(n), 0)
        n += k
    return cc, n


def _cc(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    # cc3d 4.1.1 raises "maximum length exception" for connectivity=26 on arrays with two axes of
    # length 1; with any axis of length 1 there are no 3-axis diagonals, so 18 is the same thing.
    if connectivity == 26 and 1 in mask.shape:
        connectivity = 18
    cc, n = _cc3d().connected_components(
        np.ascontiguousarray(mask), connectivity=connectivity, return_N=True, out_dtype=np.uint32
    )
    return cc, int(n)


def _values(data: np.ndarray) -> np.ndarray:
    """Distinct values of an integer array (bincount for small dtypes, which is faster than sorting)."""
    if data.dtype.kind in "bu" and data.dtype.itemsize <= 2:
        return np.flatnonzero(np.bincount(data.ravel().astype(np.intp)))
    return np.unique(data)


def _cc3d():
    try:
        import cc3d
    except ImportError as err:  # pragma: no cover - a required dependency
        raise ImportError("emseg.analysis needs connected-components-3d: pip install connected-components-3d") from err
    return cc3d


# --------------------------------------------------------------------------- moments


def _moments(
    cc: np.ndarray, n: int, origin: Sequence[int], shape: Sequence[int], image: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Additive moments of labels ``1..n`` of ``cc`` (a crop at ``origin`` of a volume of ``shape``).

    Returns arrays of length ``n``: ``sums (n, 12)`` float64 (coordinates are
    integers, exact up to 2**53), ``lo``/``hi`` ``(n, 3)`` bounding box in
    volume coordinates (end exclusive) and ``first`` (raster index of the
    first voxel, a deterministic representative).
    """
    from scipy import ndimage

    flat = np.flatnonzero(cc)
    lab = cc.ravel()[flat].astype(np.intp) - 1
    coords = [c + int(o) for c, o in zip(np.unravel_index(flat, cc.shape), origin)]
    z, y, x = (c.astype(np.float64) for c in coords)
    sums = np.zeros((n, len(_SUMS)))
    weights = {_N: None, _Z: z, _Y: y, _X: x, _ZZ: z * z, _YY: y * y, _XX: x * x, _ZY: z * y, _ZX: z * x, _YX: y * x}
    if image is not None:
        values = np.asarray(image, dtype=np.float64).ravel()[flat]
        weights[_I] = values
        weights[_II] = values * values
    for column, w in weights.items():
        sums[:, column] = np.bincount(lab, weights=w, minlength=n)
    slices = ndimage.find_objects(cc, max_label=n)
    lo = np.array([[s.start + int(o) for s, o in zip(sl, origin)] for sl in slices], np.int64).reshape(n, 3)
    hi = np.array([[s.stop + int(o) for s, o in zip(sl, origin)] for sl in slices], np.int64).reshape(n, 3)
    first = np.full(n, np.iinfo(np.int64).max, np.int64)
    raster = np.ravel_multi_index(tuple(coords), tuple(int(s) for s in shape))
    np.minimum.at(first, lab, raster)
    return {"sums": sums, "lo": lo, "hi": hi, "first": first}


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return {"sums": np.zeros((0, len(_SUMS))), "lo": np.zeros((0, 3), np.int64),
                "hi": np.zeros((0, 3), np.int64), "first": np.zeros(0, np.int64)}
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


# --------------------------------------------------------------------------- union-find


class _UnionFind:
    """Union-find over ids ``0..n-1`` (path halving, union by index)."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return int(a)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        parent = self.parent
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                return parent
            parent = nxt


@dataclass
class _ClassState:
    """Fragments of one class gathered over the blocks."""

    parts: list[dict[str, np.ndarray]] = field(default_factory=list)
    count: int = 0  # fragments so far; fragment ids are 1..count (0 is background)
    # (block index, axis, "lo"|"hi") -> (local labels of that boundary plane, id offset)
    faces: dict[tuple[tuple[int, int, int], int, str], tuple[np.ndarray, int]] = field(default_factory=dict)


def _block_grid(shape: Sequence[int], block: Sequence[int]) -> list[list[int]]:
    return [list(range(0, int(s), int(b))) for s, b in zip(shape, block)]


def _face_pairs(state: _ClassState, grid: list[list[int]], offsets: list[tuple[int, int, int]]) -> np.ndarray:
    """``(k, 2)`` fragment ids (1-based) that touch across block faces under ``offsets``."""
    pairs = []
    counts = [len(g) for g in grid]
    for gidx in itertools.product(*(range(c) for c in counts)):
        for axis in range(3):
            if gidx[axis] == 0:
                continue
            upper = state.faces.get((gidx, axis, "lo"))
            if upper is None:
                continue
            up_local, up_offset = upper
            up = np.where(up_local > 0, up_local.astype(np.int64) + up_offset, 0)
            other = [a for a in range(3) if a != axis]
            hp, hq = up.shape
            lower = np.zeros((hp + 2, hq + 2), np.int64)
            for dp, dq in itertools.product((-1, 0, 1), repeat=2):
                nidx = list(gidx)
                nidx[axis] -= 1
                nidx[other[0]] += dp
                nidx[other[1]] += dq
                if not all(0 <= v < c for v, c in zip(nidx, counts)):
                    continue
                face = state.faces.get((tuple(nidx), axis, "hi"))
                if face is None:
                    continue
                local, offset = face
                glob = np.where(local > 0, local.astype(np.int64) + offset, 0)
                src_p = slice(-1, None) if dp == -1 else (slice(0, 1) if dp == 1 else slice(None))
                src_q = slice(-1, None) if dq == -1 else (slice(0, 1) if dq == 1 else slice(None))
                dst_p = slice(0, 1) if dp == -1 else (slice(hp + 1, hp + 2) if dp == 1 else slice(1, hp + 1))
                dst_q = slice(0, 1) if dq == -1 else (slice(hq + 1, hq + 2) if dq == 1 else slice(1, hq + 1))
                lower[dst_p, dst_q] = glob[src_p, src_q]
            for o in offsets:
                if o[axis] != 1:
                    continue
                # the lower neighbour of the upper voxel u is u - o
                op, oq = o[other[0]], o[other[1]]
                below = lower[1 - op: 1 - op + hp, 1 - oq: 1 - oq + hq]
                hit = (up > 0) & (below > 0)
                if hit.any():
                    pairs.append(np.stack([up[hit], below[hit]], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def _merge(state: _ClassState, pairs: np.ndarray) -> dict[str, np.ndarray]:
    """Join fragments linked by ``pairs`` and add up their moments."""
    frags = _concat(state.parts)
    if len(pairs) == 0:
        return frags
    uf = _UnionFind(state.count)
    for a, b in pairs:
        uf.union(int(a) - 1, int(b) - 1)
    _, group = np.unique(uf.roots(), return_inverse=True)
    k = int(group.max()) + 1 if group.size else 0
    sums = np.zeros((k, len(_SUMS)))
    for column in range(len(_SUMS)):
        sums[:, column] = np.bincount(group, weights=frags["sums"][:, column], minlength=k)
    lo = np.full((k, 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((k, 3), np.iinfo(np.int64).min, np.int64)
    first = np.full(k, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(lo, group, frags["lo"])
    np.maximum.at(hi, group, frags["hi"])
    np.minimum.at(first, group, frags["first"])
    logger.debug("merged %d fragments into %d objects across block faces", state.count, k)
    return {"sums": sums, "lo": lo, "hi": hi, "first": first}



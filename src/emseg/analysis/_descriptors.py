"""Appearance descriptors of objects and the object index's similarity search.

The descriptors (:data:`DESCRIPTORS`) are computed from an object table's size, shape and
intensity columns; standardised, they are the default embedding of an
:class:`~emseg.analysis.ObjectIndex`, searched by :meth:`~emseg.analysis.ObjectIndex.similar`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from emseg.analysis._index_query import check_limit

__all__ = ["DESCRIPTORS", "METRICS", "AppearanceSearch", "check_voxel_size", "descriptor_frame", "embedding_columns"]

#: Appearance descriptors, in embedding order, each used when its source
#: columns are in the table.  ``equivalent_diameter`` is left out on purpose:
#: it is a function of the volume and would count size twice.
DESCRIPTORS = ("log_volume", "log_surface_area", "sphericity",  # 3-D tables
               "log_area", "log_perimeter", "circularity",        # 2-D tables (mode="2d")
               "elongation", "mean_intensity", "std_intensity")
METRICS = ("euclidean", "cosine")
#: Embedding columns of an object table (``emb_0``, ``emb_1``, ...: pooled CNN features, say).
EMBEDDING_COLUMN = re.compile(r"^emb_(\d+)$")


def check_voxel_size(voxel_size: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in voxel_size)
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"voxel_size must be three positive numbers (z, y, x), got {tuple(voxel_size)!r}")
    return values  # type: ignore[return-value]


def descriptor_frame(table: pd.DataFrame, voxel_size: Sequence[float]) -> pd.DataFrame:
    """Every descriptor of :data:`DESCRIPTORS` computable from ``table``, as float64 columns.

    3-D tables (``volume``, ``surface_area``) give ``log_volume``,
    ``log_surface_area`` and ``sphericity`` (``pi^(1/3) (6V)^(2/3) / A``);
    2-D tables (``area``, ``perimeter``, from ``mode="2d"``) give ``log_area``,
    ``log_perimeter`` and ``circularity`` (``4 pi A / P^2``).
    """
    out = {}
    size = boundary = None
    flat = "volume" not in table and "area" in table
    if not flat and "volume" in table:
        size = table["volume"].to_numpy(np.float64)
    elif flat:
        size = table["area"].to_numpy(np.float64)
    elif "voxel_count" in table:
        size = table["voxel_count"].to_numpy(np.float64) * float(np.prod(voxel_size))
    key = "perimeter" if flat else "surface_area"
    if key in table:
        boundary = table[key].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if size is not None:
            out["log_area" if flat else "log_volume"] = np.log(size)
        if boundary is not None:
            out["log_perimeter" if flat else "log_surface_area"] = np.log(boundary)
        if size is not None and boundary is not None:
            if flat:
                out["circularity"] = 4 * np.pi * size / boundary ** 2
            else:
                out["sphericity"] = np.pi ** (1 / 3) * (6 * size) ** (2 / 3) / boundary
    for name in ("elongation", "mean_intensity", "std_intensity"):
        if name in table:
            out[name] = table[name].to_numpy(np.float64)
    frame = pd.DataFrame(out, index=table.index)
    frame[~np.isfinite(frame)] = np.nan
    return frame


def embedding_columns(table: pd.DataFrame, embedding: str | Sequence[str]) -> list[str] | None:
    """Table columns to use as the embedding, or ``None`` for the descriptors."""
    if isinstance(embedding, str):
        if embedding == "descriptors":
            return None
        if embedding != "auto":
            raise ValueError(f"embedding must be 'auto', 'descriptors' or a list of columns, got {embedding!r}")
        found = sorted((int(m.group(1)), c) for c in table.columns if (m := EMBEDDING_COLUMN.match(str(c))))
        return [c for _, c in found] or None
    columns = list(embedding)
    missing = [c for c in columns if c not in table.columns]
    if not columns or missing:
        raise ValueError(f"embedding columns {missing or columns!r} are not in the object table")
    return columns


class AppearanceSearch:
    """The appearance queries of :class:`~emseg.analysis.ObjectIndex` (a mixin: it uses the index's
    connection, ``meta``, ``embedding_names``, ``classes``, ``voxel_size`` and row lookup)."""

    _con: Any
    meta: dict[str, Any]
    embedding_names: list[str]
    classes: dict[str, int]
    voxel_size: tuple[float, float, float]
    _vectors: np.ndarray | None
    _ids: np.ndarray | None
    _class_of: np.ndarray | None

    def similar(
        self,
        object_id: int | None = None,
        *,
        descriptors: Sequence[float] | np.ndarray | None = None,
        k: int = 10,
        metric: str = "euclidean",
        class_name: str | None = None,
    ) -> pd.DataFrame:
        """The ``k`` objects whose embeddings are nearest to an object's or to given descriptors.

        Brute force over all embeddings, loaded once into memory
        (``N x D`` float32).

        Args:
            object_id: an indexed object; it is returned first, distance 0.
            descriptors: instead of ``object_id``: a raw (not standardised)
                descriptor vector in :attr:`embedding_names` order, e.g. from
                :meth:`describe_crop`; for an index built from embedding
                columns, a vector of those columns.
            k: number of results.
            metric: ``"euclidean"`` (on the standardised embedding) or
                ``"cosine"`` (``1 - cosine similarity``).
            class_name: search only this class.

        Returns:
            Columns ``rank`` (0 = nearest), ``object_id``, ``distance``, then
            the object's columns from the ``objects`` table.
        """
        if (object_id is None) == (descriptors is None):
            raise ValueError("give exactly one of object_id and descriptors")
        k = check_limit(k, "k")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        ids, vectors, class_of = self._embeddings()
        self_index = None
        if object_id is not None:
            position = np.searchsorted(ids, int(object_id))
            if position >= len(ids) or ids[position] != int(object_id):
                raise ValueError(f"object_id {object_id} is not in {self.path}")
            self_index = int(position)
            target = vectors[self_index]
        else:
            target = self.standardise(descriptors)
        if metric == "euclidean":
            diff = vectors - target
            dist = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        else:
            norms = np.linalg.norm(vectors, axis=1)
            denom = norms * max(float(np.linalg.norm(target)), 1e-12)
            dist = 1.0 - (vectors @ target) / np.maximum(denom, 1e-12)
        dist = dist.astype(np.float64)
        if class_name is not None:
            cid = self.classes[self._class(class_name)]
            dist[class_of != cid] = np.inf
        if self_index is not None and np.isfinite(dist[self_index]):
            dist[self_index] = -1.0  # first among equals
        k = min(k, int(np.isfinite(dist).sum()))
        top = np.argpartition(dist, k - 1)[:k] if 0 < k < len(dist) else np.arange(len(dist))[:k]
        top = top[np.lexsort((ids[top], dist[top]))]
        found = dist[top]
        found[found < 0] = 0.0
        result = pd.DataFrame({"rank": np.arange(len(top)), "object_id": ids[top], "distance": found})
        rows = self.rows(result["object_id"].tolist())
        return result.merge(rows, on="object_id", how="left")

    def standardise(self, descriptors: Sequence[float] | np.ndarray) -> np.ndarray:
        """Raw descriptors (in :attr:`embedding_names` order) to the stored embedding space."""
        values = np.asarray(descriptors, dtype=np.float64).reshape(-1)
        if values.size != len(self.embedding_names):
            raise ValueError(f"descriptors must have {len(self.embedding_names)} values "
                             f"({', '.join(self.embedding_names)}), got {values.size}")
        if self.meta["embedding"] == "descriptors":
            values = (values - np.asarray(self.meta["embedding_mean"])) / np.asarray(self.meta["embedding_std"])
            values[np.isnan(values)] = 0.0
        return values.astype(np.float32)

    def describe_crop(
        self,
        raw_crop: np.ndarray | None,
        mask: np.ndarray,
        voxel_size: Sequence[float] | None = None,
        *,
        mode: str | None = None,
    ) -> np.ndarray:
        """Raw descriptors (:attr:`embedding_names` order) of the largest object in a crop.

        The crop is measured like the indexed table, with
        :func:`emseg.analysis._objects.measure_objects` (in the index's mode),
        so the descriptors are comparable with the stored ones.

        Args:
            raw_crop: ``(Y, X)`` or ``(Z, Y, X)`` raw image, or ``None`` when
                the index has no intensity descriptors.
            mask: same shape; a boolean mask or a label image.  The largest
                connected component of non-zero voxels (of one label value)
                is described.
            voxel_size: ``(z, y, x)``; default the index's voxel size.
            mode: ``"2d"`` or ``"3d"``; default the mode of the indexed table.

        Returns:
            float64 vector; pass it to :meth:`similar` as ``descriptors``.
        """
        if self.meta["embedding"] != "descriptors":
            raise ValueError(f"{self.path} uses table embedding columns ({', '.join(self.embedding_names[:3])}, ...), "
                             "which cannot be computed from a crop; pass such a vector to similar(descriptors=...)")
        voxel_size = check_voxel_size(voxel_size if voxel_size is not None else self.voxel_size)
        mask = np.asarray(mask)
        mode = mode or self.meta.get("mode") or ("2d" if mask.ndim == 2 else "3d")
        labels = mask[None] if mask.ndim == 2 else mask
        if labels.ndim != 3:
            raise ValueError(f"mask must be 2-D or 3-D, got shape {mask.shape}")
        image = None
        if raw_crop is not None:
            image = np.asarray(raw_crop)
            image = image[None] if image.ndim == 2 else image
            if image.shape != labels.shape:
                raise ValueError(f"raw crop shape {np.shape(raw_crop)} differs from mask shape {mask.shape}")
        needs_image = {"mean_intensity", "std_intensity"} & set(self.embedding_names)
        if needs_image and image is None:
            raise ValueError(f"{self.path} uses intensity descriptors; give the raw crop as well as the mask")
        labels = (labels > 0).astype(np.uint8) if labels.dtype == bool else labels.astype(np.uint32)
        if not labels.any():
            raise ValueError("mask has no foreground voxels")
        from emseg.analysis._objects import measure_objects

        table = measure_objects(labels, image=image, voxel_size=voxel_size, mode=mode)
        row = table.loc[[table["voxel_count"].idxmax()]]
        desc = descriptor_frame(row, voxel_size)
        return np.array([float(desc[n].iloc[0]) if n in desc else np.nan for n in self.embedding_names])

    def _embeddings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._vectors is None:
            rows = self._con.execute(
                "SELECT e.object_id, o.class_id, e.vector FROM embeddings e JOIN objects o USING (object_id)"
                " ORDER BY e.object_id").fetchall()
            dim = len(self.embedding_names)
            self._ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            self._class_of = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
            self._vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), dim)
        return self._ids, self._vectors, self._class_of  # type: ignore[return-value]

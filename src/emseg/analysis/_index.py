"""Object index: objects in SQLite with an R*Tree on their bounding boxes and an appearance embedding.

An index is built from an object table (one row per segmented object, as written
by :func:`emseg.analysis._objects.measure_objects`: ``object_id``, ``class_id``,
``class_name``, ``voxel_count``, ``volume``, ``surface_area``, ``bbox_z0`` ...
``bbox_x1`` in voxels with exclusive ends, ``centroid_z/y/x`` in voxels,
``elongation``, ``mean_intensity`` ...) and answers three kinds of question:

* label queries: class and ranges on any numeric column
  (:meth:`ObjectIndex.query`);
* spatial queries: objects in a box (:meth:`ObjectIndex.query` with ``box=``)
  and objects of class A within a distance of objects of class B
  (:meth:`ObjectIndex.near`), both answered through the R*Tree;
* appearance queries: the objects most similar to an object or to an image
  crop (:meth:`ObjectIndex.similar`, :meth:`ObjectIndex.describe_crop`).

Coordinates.  Physical coordinates are in the units of ``voxel_size``
(nanometres for EM).  Voxel ``i`` covers ``[i * s, (i + 1) * s)``, so an
object's box is ``[bbox_z0 * s_z, bbox_z1 * s_z)`` etc. (stored as ``z0_nm`` ...
``x1_nm``) and its centroid is ``(centroid_z + 0.5) * s_z`` (``cz_nm`` ...).

Distance between two objects (:meth:`ObjectIndex.near`): the Euclidean gap
between their bounding boxes, ``sqrt(gz^2 + gy^2 + gx^2)`` with
``gz = max(0, a.z0 - b.z1, b.z0 - a.z1)`` (and so on); 0 when the boxes
overlap or touch.  It never exceeds the true surface-to-surface distance, so
"within D" means "boxes within D".

Database layout (SQLite, one file): ``emseg_meta`` (key, JSON value: format,
version, voxel size, embedding definition and standardisation), ``classes``,
``objects`` (one row per object, ``object_id`` is the primary key),
``objects_rtree`` (R*Tree virtual table on the physical boxes, same ids) and
``embeddings`` (``object_id``, float32 BLOB).  All user values reach SQL as
bound parameters; column names are checked against the table's own columns.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emseg.analysis._descriptors import DESCRIPTORS, AppearanceSearch, check_voxel_size, descriptor_frame
from emseg.analysis._descriptors import embedding_columns
from emseg.analysis._index_build import BOX_NM, FORMAT, VERSION, prepare_objects, write_index
from emseg.analysis._index_query import IndexQueries
from emseg.io import atomic_output, read_table

logger = logging.getLogger(__name__)

__all__ = ["BOX_NM", "DESCRIPTORS", "FORMAT", "ObjectIndex"]


class ObjectIndex(IndexQueries, AppearanceSearch):
    """An object table in SQLite with an R*Tree on bounding boxes; see the module docstring.

    Build one with :meth:`build`, open an existing one with :meth:`open`; use
    it as a context manager or call :meth:`close`.

    Attributes:
        path: the database file.
        voxel_size: ``(z, y, x)`` voxel size the physical coordinates use.
        classes: ``{class_name: class_id}`` of the indexed objects.
        class_counts: ``{class_name: number of objects}``.
        columns: the columns of the ``objects`` table (query results).
        embedding_names: names of the embedding's dimensions (descriptor names
            or table columns such as ``emb_0``).
    """

    def __init__(self, connection: sqlite3.Connection, path: Path, meta: dict[str, Any]):
        self._con = connection
        self.path = path
        self.meta = meta
        self.voxel_size: tuple[float, float, float] = tuple(meta["voxel_size"])  # type: ignore[assignment]
        self.embedding_names: list[str] = list(meta["embedding_names"])
        rows = connection.execute("SELECT class_name, class_id, count FROM classes ORDER BY class_id").fetchall()
        self.classes: dict[str, int] = {name: int(cid) for name, cid, _ in rows}
        self.class_counts = {name: int(n) for name, _, n in rows}
        self.columns: list[str] = [r[1] for r in connection.execute("PRAGMA table_info(objects)")]
        self._vectors: np.ndarray | None = None
        self._ids: np.ndarray | None = None
        self._class_of: np.ndarray | None = None

    @classmethod
    def build(
        cls,
        table: pd.DataFrame | str | os.PathLike,
        db_path: str | os.PathLike,
        *,
        voxel_size: Sequence[float] | None = None,
        overwrite: bool = False,
        embedding: str | Sequence[str] = "auto",
    ) -> ObjectIndex:
        """Build an index from an object table; written to a temporary file, then renamed.

        Args:
            table: a DataFrame or a ``.parquet``/``.csv`` path, one row per
                object.  Required: ``bbox_z0, bbox_y0, bbox_x0, bbox_z1,
                bbox_y1, bbox_x1`` (voxels, ends exclusive) and ``class_name``
                or ``class_id``.  Optional: ``object_id`` (unique integers;
                default 1..N), ``centroid_z/y/x`` (voxels; default the box
                centre), the size/shape/intensity columns used by the
                descriptors, and any other numeric column (kept for range
                queries).
            db_path: the SQLite file to write.
            voxel_size: ``(z, y, x)`` size of a voxel, in nm for EM; default
                the table's own (``table.attrs["voxel_size"]``, which
                ``measure_objects`` sets and Parquet keeps), else ``(1, 1, 1)``.
            overwrite: replace an existing ``db_path``.
            embedding: ``"auto"`` (table columns ``emb_0 .. emb_k`` when
                present, e.g. pooled CNN features, else the descriptors),
                ``"descriptors"`` (the standardised :data:`DESCRIPTORS` found
                in the table), or an explicit list of table columns.

        Returns:
            The opened index.

        Raises:
            FileExistsError: ``db_path`` exists and ``overwrite`` is False.
            ValueError: a required column is missing, ``object_id`` is not
                unique, the table is empty, or ``voxel_size`` is invalid.
        """
        source = "table"
        if not isinstance(table, pd.DataFrame):
            source = str(table)
            table = read_table(table, what="object table")
        if voxel_size is None:
            voxel_size = table.attrs.get("voxel_size") or (1.0, 1.0, 1.0)
        voxel_size = check_voxel_size(voxel_size)
        mode = table.attrs.get("mode") or ("2d" if "area" in table and "volume" not in table else "3d")
        db_path = Path(db_path)
        if not overwrite and db_path.exists():
            raise FileExistsError(f"{db_path} already exists; pass overwrite=True (--overwrite) to replace it")
        frame = prepare_objects(table, voxel_size, source)
        emb_columns = embedding_columns(table, embedding)
        meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "voxel_size": list(voxel_size),
                                "n_objects": len(frame), "source": source, "mode": mode}
        if emb_columns is None:
            desc = descriptor_frame(table, voxel_size)
            desc = desc.loc[:, desc.notna().any()]
            if desc.shape[1] == 0:
                raise ValueError(f"object table {source} has none of the columns the appearance descriptors need "
                                 "(volume/area or voxel_count, surface_area/perimeter, elongation, ...)")
            values = desc.to_numpy(np.float64)
            mean = np.nanmean(values, axis=0)
            std = np.nanstd(values, axis=0)
            std[~(std > 0)] = 1.0
            vectors = (values - mean) / std
            vectors[np.isnan(vectors)] = 0.0  # a missing descriptor sits at the mean
            meta.update(embedding="descriptors", embedding_names=list(desc.columns),
                        embedding_mean=mean.tolist(), embedding_std=std.tolist())
        else:
            vectors = table[emb_columns].to_numpy(np.float64)
            if not np.isfinite(vectors).all():
                raise ValueError(f"embedding columns of {source} contain missing or non-finite values")
            meta.update(embedding="columns", embedding_names=list(emb_columns))
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with atomic_output(db_path, overwrite=overwrite) as tmp:
            con = sqlite3.connect(tmp)
            try:
                write_index(con, frame, vectors, meta)
            finally:
                con.close()
        logger.info("indexed %d objects (%d classes) in %s", len(frame), frame["class_name"].nunique(), db_path)
        return cls.open(db_path)

    @classmethod
    def open(cls, db_path: str | os.PathLike) -> ObjectIndex:
        """Open an existing index read-only.

        Raises:
            FileNotFoundError: ``db_path`` does not exist.
            ValueError: ``db_path`` is not an emseg object index (not SQLite,
                or SQLite without the ``emseg_meta`` format marker).
        """
        path = Path(db_path)
        if not path.is_file():
            raise FileNotFoundError(f"object index {path} does not exist")
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            rows = dict(con.execute("SELECT key, value FROM emseg_meta").fetchall())
            meta = {k: json.loads(v) for k, v in rows.items()}
            if meta.get("format") != FORMAT:
                raise ValueError("format marker missing")
            if int(meta.get("version", 0)) > VERSION:
                raise ValueError(f"index version {meta.get('version')} is newer than this emseg ({VERSION})")
            return cls(con, path, meta)
        except (sqlite3.DatabaseError, ValueError, KeyError) as err:
            con.close()
            raise ValueError(f"{path} is not an emseg object index ({err}); "
                             "build one with `emseg index TABLE --db FILE`") from None

    def close(self) -> None:
        """Close the database connection."""
        self._con.close()

    def __enter__(self) -> ObjectIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.meta["n_objects"])

    def __repr__(self) -> str:
        return f"ObjectIndex({str(self.path)!r}, {len(self)} objects, classes={list(self.classes)})"

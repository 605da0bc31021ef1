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
import math
import os
import re
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emseg.io import atomic_output

logger = logging.getLogger(__name__)

__all__ = ["DESCRIPTORS", "FORMAT", "ObjectIndex", "read_object_table"]

#: Value of ``format`` in the ``emseg_meta`` table of every index.
FORMAT = "emseg-object-index"
VERSION = 1

#: Appearance descriptors, in embedding order, each used when its source
#: columns are in the table.  ``equivalent_diameter`` is left out on purpose:
#: it is a function of the volume and would count size twice.
DESCRIPTORS = ("log_volume", "log_surface_area", "sphericity",  # 3-D tables
               "log_area", "log_perimeter", "circularity",        # 2-D tables (mode="2d")
               "elongation", "mean_intensity", "std_intensity")

BBOX_COLUMNS = ("bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1")
#: Physical box columns of ``objects`` (and the R*Tree), min/max per axis.
BOX_NM = ("z0_nm", "z1_nm", "y0_nm", "y1_nm", "x0_nm", "x1_nm")
CENTROID_NM = ("cz_nm", "cy_nm", "cx_nm")
BOX_MODES = ("within", "intersects")
METRICS = ("euclidean", "cosine")

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EMB = re.compile(r"^emb_(\d+)$")


# --------------------------------------------------------------------------- tables


def read_object_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read an object table from ``.parquet`` or ``.csv``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the suffix is neither ``.parquet``/``.pq`` nor ``.csv``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"object table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"object table {path}: unknown suffix {suffix or 'none'!r}; expected .parquet or .csv")


def write_table(frame: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write ``frame`` as ``.csv`` or ``.parquet`` (chosen by suffix), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ValueError(f"output {path}: unknown suffix {suffix or 'none'!r}; expected .csv or .parquet")
    with atomic_output(path, overwrite=overwrite) as tmp:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path


def _check_voxel_size(voxel_size: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in voxel_size)
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"voxel_size must be three positive numbers (z, y, x), got {tuple(voxel_size)!r}")
    return values  # type: ignore[return-value]


def _descriptor_frame(table: pd.DataFrame, voxel_size: Sequence[float]) -> pd.DataFrame:
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


def _embedding_columns(table: pd.DataFrame, embedding: str | Sequence[str]) -> list[str] | None:
    """Table columns to use as the embedding, or ``None`` for the descriptors."""
    if isinstance(embedding, str):
        if embedding == "descriptors":
            return None
        if embedding != "auto":
            raise ValueError(f"embedding must be 'auto', 'descriptors' or a list of columns, got {embedding!r}")
        found = sorted((int(m.group(1)), c) for c in table.columns if (m := _EMB.match(str(c))))
        return [c for _, c in found] or None
    columns = list(embedding)
    missing = [c for c in columns if c not in table.columns]
    if not columns or missing:
        raise ValueError(f"embedding columns {missing or columns!r} are not in the object table")
    return columns


# --------------------------------------------------------------------------- index


class ObjectIndex:
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

    # ----------------------------------------------------------------- building

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
            table = read_object_table(table)
        if voxel_size is None:
            voxel_size = table.attrs.get("voxel_size") or (1.0, 1.0, 1.0)
        voxel_size = _check_voxel_size(voxel_size)
        mode = table.attrs.get("mode") or ("2d" if "area" in table and "volume" not in table else "3d")
        db_path = Path(db_path)
        if not overwrite and db_path.exists():
            raise FileExistsError(f"{db_path} already exists; pass overwrite=True (--overwrite) to replace it")
        frame = _prepare(table, voxel_size, source)
        emb_columns = _embedding_columns(table, embedding)
        meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "voxel_size": list(voxel_size),
                                "n_objects": len(frame), "source": source, "mode": mode}
        if emb_columns is None:
            desc = _descriptor_frame(table, voxel_size)
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
                _write(con, frame, vectors, meta)
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

    # ----------------------------------------------------------------- label and box queries

    def query(
        self,
        *,
        class_name: str | None = None,
        ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
        box: Sequence[float] | None = None,
        box_mode: str = "within",
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Objects matching a class, value ranges and a box, ordered by ``object_id``.

        Args:
            class_name: keep only this class (name, or class id as text).
            ranges: ``{column: (low, high)}``, inclusive, ``None`` for an open
                end, on any numeric column of :attr:`columns` (e.g.
                ``{"volume": (1e6, None), "elongation": (None, 3)}``).
            box: ``(z0, y0, x0, z1, y1, x1)`` in physical units (nm).
            box_mode: ``"within"``: the object's box lies inside ``box``;
                ``"intersects"``: it overlaps ``box`` with positive volume.
            limit: at most this many rows.

        Returns:
            One row per object with every column of the ``objects`` table.
        """
        where, params, joins = [], [], ""
        if class_name is not None:
            where.append("o.class_name = ?")
            params.append(self._class(class_name))
        for column, (low, high) in (ranges or {}).items():
            column = self._column(column)
            if low is not None:
                where.append(f'o."{column}" >= ?')
                params.append(float(low))
            if high is not None:
                where.append(f'o."{column}" <= ?')
                params.append(float(high))
        if box is not None:
            joins = "objects_rtree r CROSS JOIN "
            box_where, box_params = _box_sql("o", "r", _check_box(box), _check_mode(box_mode))
            where += box_where
            params += box_params
            where.append("o.object_id = r.id")
        sql = f"SELECT o.* FROM {joins}objects o"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY o.object_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(_check_limit(limit))
        return self._frame(sql, params)

    def explain(self, sql: str, params: Sequence[Any] = ()) -> list[str]:
        """SQLite's ``EXPLAIN QUERY PLAN`` lines for ``sql`` (for tests and tuning)."""
        return [row[-1] for row in self._con.execute("EXPLAIN QUERY PLAN " + sql, list(params))]

    # ----------------------------------------------------------------- proximity

    def near(
        self,
        class_a: str,
        class_b: str,
        distance_nm: float,
        *,
        box: Sequence[float] | None = None,
        box_mode: str = "intersects",
    ) -> pd.DataFrame:
        """Pairs (object of class A, object of class B) whose boxes are within ``distance_nm``.

        Candidates come from the R*Tree (B boxes meeting A's box grown by the
        distance on every side); the exact bounding-box gap (module docstring)
        is then computed in float64.  An object is never paired with itself.

        Args:
            class_a: class of the objects asked about.
            class_b: class of their neighbours.
            distance_nm: the largest bbox-to-bbox Euclidean gap, in physical
                units (nm), ``>= 0``.
            box: optional region ``(z0, y0, x0, z1, y1, x1)``: only A objects
                in it (``box_mode``) are considered; B partners may lie outside.
            box_mode: ``"intersects"`` (default) or ``"within"``.

        Returns:
            Columns ``id_a``, ``id_b``, ``distance`` (bbox gap) and
            ``centroid_distance`` (nm), sorted by ``id_a``, ``distance``.
        """
        distance = float(distance_nm)
        if not (math.isfinite(distance) and distance >= 0):
            raise ValueError(f"distance_nm must be a finite number >= 0, got {distance_nm!r}")
        name_a, name_b = self._class(class_a), self._class(class_b)
        # The outer loop runs over the rarer class; each of its objects probes the R*Tree.
        swap = self.class_counts[name_b] < self.class_counts[name_a]
        outer, inner = (name_b, name_a) if swap else (name_a, name_b)
        where = ["o.class_name = ?"]
        params: list[Any] = [outer]
        head = "objects o"
        if box is not None:
            box, box_mode = _check_box(box), _check_mode(box_mode)
            head = "objects_rtree rb CROSS JOIN objects o"
            if swap:  # B objects near the region (box grown by the distance), A objects in it exactly
                grown = tuple(v - distance for v in box[:3]) + tuple(v + distance for v in box[3:])
                tree_where, tree_params = _box_sql("o", "rb", grown, box_mode)
                exact_where, exact_params = _box_sql("i", "rb", box, box_mode)
                where += tree_where[:6] + exact_where[6:]
                params += tree_params[:6] + exact_params[6:]
            else:
                box_where, box_params = _box_sql("o", "rb", box, box_mode)
                where += box_where
                params += box_params
            where.append("o.object_id = rb.id")
        # R*Tree: inner boxes meeting the outer box grown by `distance` (closed intervals).
        where += ["r.z0_nm <= o.z1_nm + ?", "r.z1_nm >= o.z0_nm - ?",
                  "r.y0_nm <= o.y1_nm + ?", "r.y1_nm >= o.y0_nm - ?",
                  "r.x0_nm <= o.x1_nm + ?", "r.x1_nm >= o.x0_nm - ?",
                  "i.object_id = r.id", "i.class_name = ?", "i.object_id != o.object_id"]
        params += [distance] * 6 + [inner]
        sql = (
            "SELECT o.object_id, i.object_id,"
            " max(0, i.z0_nm - o.z1_nm, o.z0_nm - i.z1_nm),"
            " max(0, i.y0_nm - o.y1_nm, o.y0_nm - i.y1_nm),"
            " max(0, i.x0_nm - o.x1_nm, o.x0_nm - i.x1_nm),"
            " i.cz_nm - o.cz_nm, i.cy_nm - o.cy_nm, i.cx_nm - o.cx_nm"
            f" FROM {head} CROSS JOIN objects_rtree r CROSS JOIN objects i WHERE " + " AND ".join(where)
        )
        self._last_near_sql = (sql, params)
        rows = self._con.execute(sql, params).fetchall()
        data = np.array(rows, dtype=np.float64).reshape(-1, 8)
        gap = np.sqrt((data[:, 2:5] ** 2).sum(axis=1))
        keep = gap <= distance
        data, gap = data[keep], gap[keep]
        ids_o, ids_i = data[:, 0].astype(np.int64), data[:, 1].astype(np.int64)
        result = pd.DataFrame({
            "id_a": ids_i if swap else ids_o,
            "id_b": ids_o if swap else ids_i,
            "distance": gap,
            "centroid_distance": np.sqrt((data[:, 5:8] ** 2).sum(axis=1)),
        })
        return result.sort_values(["id_a", "distance", "id_b"], ignore_index=True)

    # ----------------------------------------------------------------- appearance

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
        k = _check_limit(k, "k")
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
        voxel_size = _check_voxel_size(voxel_size if voxel_size is not None else self.voxel_size)
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
        desc = _descriptor_frame(row, voxel_size)
        return np.array([float(desc[n].iloc[0]) if n in desc else np.nan for n in self.embedding_names])

    # ----------------------------------------------------------------- helpers

    def _class(self, name: str | int) -> str:
        text = str(name)
        if text in self.classes:
            return text
        by_id = {str(cid): n for n, cid in self.classes.items()}
        if text in by_id:
            return by_id[text]
        raise ValueError(f"unknown class {text!r} in {self.path}; available: {', '.join(self.classes) or 'none'}")

    def _column(self, name: str) -> str:
        numeric = [c for c in self.columns if c != "class_name"]
        if name not in numeric:
            raise ValueError(f"unknown column {name!r} for a range in {self.path}; available: {', '.join(numeric)}")
        return name

    def _frame(self, sql: str, params: Sequence[Any]) -> pd.DataFrame:
        cursor = self._con.execute(sql, list(params))
        names = [d[0] for d in cursor.description]
        return pd.DataFrame.from_records(cursor.fetchall(), columns=names)

    def rows(self, object_ids: Sequence[int]) -> pd.DataFrame:
        """The ``objects`` rows of these ids (any order; unknown ids are left out)."""
        object_ids = [int(i) for i in object_ids]
        frames = [self._frame(f"SELECT * FROM objects WHERE object_id IN ({','.join('?' * len(chunk))})", chunk)
                  for chunk in (object_ids[i:i + 500] for i in range(0, len(object_ids), 500))]
        return pd.concat(frames, ignore_index=True) if frames else self._frame(
            "SELECT * FROM objects WHERE 0", [])

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


# --------------------------------------------------------------------------- build helpers


def _prepare(table: pd.DataFrame, voxel_size: tuple[float, float, float], source: str) -> pd.DataFrame:
    """Validate the object table and return the ``objects`` rows (numeric columns + physical boxes)."""
    if len(table) == 0:
        raise ValueError(f"object table {source} has no rows")
    missing = [c for c in BBOX_COLUMNS if c not in table.columns]
    if "class_name" not in table.columns and "class_id" not in table.columns:
        missing.append("class_name or class_id")
    if missing:
        raise ValueError(f"object table {source} lacks column(s) {', '.join(missing)}; "
                         "expected a table from emseg's object measurement")
    frame = pd.DataFrame(index=table.index)
    if "object_id" in table.columns:
        ids = table["object_id"]
        if ids.isna().any() or not np.array_equal(ids.to_numpy(np.float64), ids.to_numpy(np.float64).round()):
            raise ValueError(f"object_id of {source} must be integers")
        if ids.duplicated().any():
            dup = ids[ids.duplicated()].iloc[:5].tolist()
            raise ValueError(f"object_id of {source} must be unique; repeated: {dup}")
        frame["object_id"] = ids.astype(np.int64)
    else:
        frame["object_id"] = np.arange(1, len(table) + 1, dtype=np.int64)
    if "class_name" in table.columns:
        names = table["class_name"].astype(str)
        if "class_id" in table.columns:
            class_id = table["class_id"].astype(np.int64)
        else:
            class_id = pd.Series(pd.factorize(names, sort=True)[0] + 1, index=table.index)
    else:
        class_id = table["class_id"].astype(np.int64)
        names = class_id.astype(str)
    pairs = pd.DataFrame({"n": names, "c": class_id}).drop_duplicates()
    if pairs["n"].duplicated().any() or pairs["c"].duplicated().any():
        raise ValueError(f"object table {source}: class_name and class_id do not map one to one")
    frame["class_id"] = class_id
    frame["class_name"] = names
    skipped = []
    for column in table.columns:
        if column in frame.columns or _EMB.match(str(column)):
            continue
        series = table[column]
        if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)):
            continue
        if not _IDENT.match(str(column)) or str(column).lower() in {c.lower() for c in (*BOX_NM, *CENTROID_NM)}:
            skipped.append(str(column))
            continue
        frame[column] = series.astype(np.int64) if pd.api.types.is_bool_dtype(series) else series
    if skipped:
        logger.warning("left out column(s) with names unusable in SQL: %s", ", ".join(skipped))
    bbox = table[list(BBOX_COLUMNS)].to_numpy(np.float64)
    if not np.isfinite(bbox).all() or (bbox[:, 3:] < bbox[:, :3]).any():
        raise ValueError(f"bounding boxes of {source} must be finite with bbox_*1 >= bbox_*0")
    size = np.asarray(voxel_size)
    lo, hi = bbox[:, :3] * size, bbox[:, 3:] * size
    for axis, name in enumerate("zyx"):
        frame[f"{name}0_nm"] = lo[:, axis]
        frame[f"{name}1_nm"] = hi[:, axis]
    if all(f"centroid_{a}" in table.columns for a in "zyx"):
        centroid = (table[[f"centroid_{a}" for a in "zyx"]].to_numpy(np.float64) + 0.5) * size
    else:
        centroid = (lo + hi) / 2
    for axis, name in enumerate(CENTROID_NM):
        frame[name] = centroid[:, axis]
    desc = _descriptor_frame(table, voxel_size)
    for shape in ("sphericity", "circularity"):
        if shape in desc and shape not in frame.columns:
            frame[shape] = desc[shape]
    for column, expected in (("volume", float(np.prod(size))), ("area", float(size[1] * size[2]))):
        if column in table.columns and "voxel_count" in table.columns:
            per_voxel = (table[column] / table["voxel_count"].where(table["voxel_count"] > 0)).median()
            if np.isfinite(per_voxel) and not np.isclose(per_voxel, expected, rtol=1e-3):
                logger.warning("the table's %s / voxel_count is %.4g but voxel_size %s gives %.4g; "
                               "is voxel_size right?", column, per_voxel, voxel_size, expected)
    return frame.reset_index(drop=True)


def _write(con: sqlite3.Connection, frame: pd.DataFrame, vectors: np.ndarray, meta: dict[str, Any]) -> None:
    con.execute("PRAGMA journal_mode = OFF")
    con.execute("PRAGMA synchronous = OFF")
    con.execute("CREATE TABLE emseg_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.executemany("INSERT INTO emseg_meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
    classes = frame.groupby(["class_id", "class_name"]).size().reset_index()
    con.execute("CREATE TABLE classes (class_id INTEGER PRIMARY KEY, class_name TEXT UNIQUE NOT NULL,"
                " count INTEGER NOT NULL)")
    con.executemany("INSERT INTO classes VALUES (?, ?, ?)",
                    [(int(c), str(n), int(k)) for c, n, k in classes.itertuples(index=False)])
    decl = []
    for column in frame.columns:
        if column == "object_id":
            decl.append('"object_id" INTEGER PRIMARY KEY')
        elif column == "class_name":
            decl.append('"class_name" TEXT NOT NULL')
        else:
            kind = "INTEGER" if pd.api.types.is_integer_dtype(frame[column]) else "REAL"
            decl.append(f'"{column}" {kind}')
    con.execute(f"CREATE TABLE objects ({', '.join(decl)})")
    placeholders = ", ".join("?" * len(frame.columns))
    columns = [frame[c].to_numpy() for c in frame.columns]
    records = (tuple(_py(v) for v in row) for row in zip(*columns))
    con.executemany(f"INSERT INTO objects VALUES ({placeholders})", records)
    con.execute("CREATE INDEX objects_class ON objects (class_name)")
    con.execute("CREATE INDEX objects_class_id ON objects (class_id)")
    con.execute("CREATE VIRTUAL TABLE objects_rtree USING rtree(id, z0_nm, z1_nm, y0_nm, y1_nm, x0_nm, x1_nm)")
    con.execute("INSERT INTO objects_rtree SELECT object_id, z0_nm, z1_nm, y0_nm, y1_nm, x0_nm, x1_nm FROM objects")
    con.execute("CREATE TABLE embeddings (object_id INTEGER PRIMARY KEY, vector BLOB NOT NULL)")
    ids = frame["object_id"].to_numpy()
    con.executemany("INSERT INTO embeddings VALUES (?, ?)",
                    ((int(i), v.astype("<f4").tobytes()) for i, v in zip(ids, vectors)))
    con.execute("ANALYZE")
    con.commit()


def _py(value: Any) -> Any:
    """Numpy scalar to a Python value SQLite accepts; NaN to NULL."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _check_box(box: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in box)
    if len(values) != 6 or not all(math.isfinite(v) for v in values) or any(
            values[i + 3] < values[i] for i in range(3)):
        raise ValueError(f"box must be six numbers z0 y0 x0 z1 y1 x1 (nm) with z1 >= z0 etc., got {tuple(box)!r}")
    return values


def _check_mode(mode: str) -> str:
    if mode not in BOX_MODES:
        raise ValueError(f"box_mode must be one of {BOX_MODES}, got {mode!r}")
    return mode


def _check_limit(value: int, name: str = "limit") -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _box_sql(obj: str, tree: str, box: tuple[float, ...], mode: str) -> tuple[list[str], list[float]]:
    """WHERE terms for a box: a conservative R*Tree test on ``tree``, the exact test on ``obj``.

    The R*Tree stores float32 boxes rounded outwards, so it is asked for boxes
    meeting the query box (closed intervals, a superset for both modes); the
    float64 columns of ``objects`` then decide.
    """
    z0, y0, x0, z1, y1, x1 = box
    terms = [f"{tree}.z0_nm <= ?", f"{tree}.z1_nm >= ?", f"{tree}.y0_nm <= ?", f"{tree}.y1_nm >= ?",
             f"{tree}.x0_nm <= ?", f"{tree}.x1_nm >= ?"]
    params = [z1, z0, y1, y0, x1, x0]
    if mode == "within":
        terms += [f"{obj}.z0_nm >= ?", f"{obj}.z1_nm <= ?", f"{obj}.y0_nm >= ?", f"{obj}.y1_nm <= ?",
                  f"{obj}.x0_nm >= ?", f"{obj}.x1_nm <= ?"]
        params += [z0, z1, y0, y1, x0, x1]
    else:
        terms += [f"{obj}.z0_nm < ?", f"{obj}.z1_nm > ?", f"{obj}.y0_nm < ?", f"{obj}.y1_nm > ?",
                  f"{obj}.x0_nm < ?", f"{obj}.x1_nm > ?"]
        params += [z1, z0, y1, y0, x1, x0]
    return terms, params

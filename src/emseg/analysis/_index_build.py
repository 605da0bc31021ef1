"""Building the object index: validate an object table into the ``objects`` rows, write the SQLite file
(tables, R*Tree, embeddings); :meth:`~emseg.analysis.ObjectIndex.build` drives it."""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
from typing import Any

import numpy as np
import pandas as pd

from emseg.analysis._descriptors import EMBEDDING_COLUMN, descriptor_frame

logger = logging.getLogger(__name__)

__all__ = ["BOX_NM", "CENTROID_NM", "FORMAT", "VERSION", "prepare_objects", "write_index"]

#: Value of ``format`` in the ``emseg_meta`` table of every index.
FORMAT = "emseg-object-index"
VERSION = 1

BBOX_COLUMNS = ("bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1")
#: Physical box columns of ``objects`` (and the R*Tree), min/max per axis.
BOX_NM = ("z0_nm", "z1_nm", "y0_nm", "y1_nm", "x0_nm", "x1_nm")
CENTROID_NM = ("cz_nm", "cy_nm", "cx_nm")

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def prepare_objects(table: pd.DataFrame, voxel_size: tuple[float, float, float], source: str) -> pd.DataFrame:
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
        if column in frame.columns or EMBEDDING_COLUMN.match(str(column)):
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
    desc = descriptor_frame(table, voxel_size)
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


def write_index(con: sqlite3.Connection, frame: pd.DataFrame, vectors: np.ndarray, meta: dict[str, Any]) -> None:
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

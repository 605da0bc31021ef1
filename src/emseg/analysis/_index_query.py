"""Label, box and proximity queries of the object index (SQL on the ``objects`` table and its R*Tree)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["BOX_MODES", "IndexQueries", "check_limit"]

BOX_MODES = ("within", "intersects")


class IndexQueries:
    """The label, box and proximity queries of :class:`~emseg.analysis.ObjectIndex` (a mixin: it uses the
    index's connection, ``path``, ``classes``, ``class_counts`` and ``columns``)."""

    _con: Any
    path: Any
    classes: dict[str, int]
    class_counts: dict[str, int]
    columns: list[str]

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
            box_where, box_params = _box_sql("o", "r", check_box(box), check_mode(box_mode))
            where += box_where
            params += box_params
            where.append("o.object_id = r.id")
        sql = f"SELECT o.* FROM {joins}objects o"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY o.object_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(check_limit(limit))
        return self._frame(sql, params)

    def explain(self, sql: str, params: Sequence[Any] = ()) -> list[str]:
        """SQLite's ``EXPLAIN QUERY PLAN`` lines for ``sql`` (for tests and tuning)."""
        return [row[-1] for row in self._con.execute("EXPLAIN QUERY PLAN " + sql, list(params))]

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
            box, box_mode = check_box(box), check_mode(box_mode)
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


def check_box(box: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in box)
    if len(values) != 6 or not all(math.isfinite(v) for v in values) or any(
            values[i + 3] < values[i] for i in range(3)):
        raise ValueError(f"box must be six numbers z0 y0 x0 z1 y1 x1 (nm) with z1 >= z0 etc., got {tuple(box)!r}")
    return values


def check_mode(mode: str) -> str:
    if mode not in BOX_MODES:
        raise ValueError(f"box_mode must be one of {BOX_MODES}, got {mode!r}")
    return mode


def check_limit(value: int, name: str = "limit") -> int:
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

"""Object index at scale: build time, file size and query latency for >= 100,000 real objects.

    nice -n 19 .venv/bin/python benchmarks/object_index.py

Objects: the EPFL test labels (5 x 768 x 1024, 5 nm voxels) are measured once
with :func:`emseg.analysis._objects.measure_objects` in 2-D mode (8-connected
components of each slice) for mitochondrion (2), vesicle (4) and PSD (5), with
the raw image for intensities.  That table is then replicated on a virtual
grid of tiles, each a copy of the 5-slice volume shifted by
``(0, row * 768, col * 1024)`` voxels: rows get new ``object_id`` values and
shifted ``bbox_*``/``centroid_*``; nothing else changes.  No large array is
ever made; the grid grows until the index holds at least ``--min-objects``
objects.  (Replicated objects have identical descriptors, so the similarity
query returns each object's copies first; that does not change its cost.)

Measured: index build time (``ObjectIndex.build``, writing SQLite + R*Tree +
embeddings), database size, and the latency (median and 95th percentile over
``--repeats`` runs, each in a fresh random place or for a fresh random object)
of: a label query (mitochondria with area >= 1e5 nm^2 and elongation <= 3),
a box query (objects within a random 5 x 512 x 512- or 5 x 2048 x 2048-voxel box), a proximity
query (vesicles within 200 nm, bbox-to-bbox gap, of a PSD, for vesicles in a
random 2048 x 2048 region), the same proximity query over the whole index
(fewer repeats), and a k = 10 similarity query (Euclidean, random object;
the one-off loading of the embeddings is timed separately).  Latencies include
building the returned pandas DataFrame.  Writes
benchmarks/results/object_index.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from emseg.analysis._index import ObjectIndex
from emseg.analysis._objects import measure_objects

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "epfl-multiclass"
CLASSES = ["background", "membrane", "mitochondrion", "mitochondrial_boundary", "vesicle", "psd", "axon"]
VOXEL = (5.0, 5.0, 5.0)


def tiled_table(table: pd.DataFrame, shape: tuple[int, int, int], min_objects: int) -> tuple[pd.DataFrame, tuple]:
    """Replicate ``table`` on a grid of tiles of ``shape`` until it has ``min_objects`` rows."""
    tiles = math.ceil(min_objects / len(table))
    cols = math.ceil(math.sqrt(tiles))
    rows = math.ceil(tiles / cols)
    parts = []
    n = len(table)
    for t in range(rows * cols):
        r, c = divmod(t, cols)
        part = table.copy()
        part["object_id"] = table["object_id"].to_numpy() + t * n
        for column in ("bbox_y0", "bbox_y1", "centroid_y"):
            part[column] = table[column] + r * shape[1]
        for column in ("bbox_x0", "bbox_x1", "centroid_x"):
            part[column] = table[column] + c * shape[2]
        part["tile"] = t
        parts.append(part)
    return pd.concat(parts, ignore_index=True), (rows, cols)


def timed(fn, repeats: int) -> dict:
    times, sizes = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        result = fn(i)
        times.append(time.perf_counter() - t0)
        sizes.append(len(result))
    ms = np.asarray(times) * 1e3
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "repeats": repeats, "median_rows": float(np.median(sizes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-objects", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/object_index.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    rng = np.random.default_rng(0)

    labels = tifffile.imread(args.data / "test_labels.tif")
    raw = tifffile.imread(args.data / "test_raw.tif")
    t0 = time.perf_counter()
    base = measure_objects(labels, image=raw, voxel_size=VOXEL, classes=CLASSES, class_ids=[2, 4, 5], mode="2d")
    measure_s = time.perf_counter() - t0
    table, grid = tiled_table(base, labels.shape, args.min_objects)
    extent_nm = (labels.shape[0] * VOXEL[0], grid[0] * labels.shape[1] * VOXEL[1],
                 grid[1] * labels.shape[2] * VOXEL[2])

    with tempfile.TemporaryDirectory(dir=args.json.parent if args.json.parent.exists() else None) as tmp:
        db = Path(tmp) / "objects.sqlite"
        t0 = time.perf_counter()
        index = ObjectIndex.build(table, db, voxel_size=VOXEL)
        build_s = time.perf_counter() - t0
        db_mb = db.stat().st_size / 2**20

        def region(_, voxels: int = 2048):
            side = voxels * VOXEL[1]
            y0 = rng.uniform(0, extent_nm[1] - side)
            x0 = rng.uniform(0, extent_nm[2] - side)
            return (0.0, y0, x0, extent_nm[0], y0 + side, x0 + side)

        ids = table["object_id"].to_numpy()
        t0 = time.perf_counter()
        index.similar(int(ids[0]), k=10)
        load_s = time.perf_counter() - t0
        queries = {
            "label (mitochondrion, area >= 1e5 nm^2, elongation <= 3)": timed(
                lambda _: index.query(class_name="mitochondrion",
                                      ranges={"area": (1e5, None), "elongation": (None, 3.0)}), args.repeats),
            "box (within random 5x512x512-voxel box)": timed(
                lambda i: index.query(box=region(i, 512)), args.repeats),
            "box (within random 5x2048x2048-voxel box)": timed(
                lambda i: index.query(box=region(i)), args.repeats),
            "proximity (vesicle <= 200 nm of PSD, random 2048^2 region)": timed(
                lambda i: index.near("vesicle", "psd", 200.0, box=region(i)), args.repeats),
            "proximity (vesicle <= 200 nm of PSD, whole index)": timed(
                lambda _: index.near("vesicle", "psd", 200.0), max(3, args.repeats // 10)),
            "similar (k=10, euclidean, random object)": timed(
                lambda _: index.similar(int(rng.choice(ids)), k=10), args.repeats),
        }
        counts = dict(index.class_counts)
        index.close()

    result = {
        "objects": len(table), "objects_per_tile": len(base), "tiles": list(grid), "classes": counts,
        "extent_nm": list(extent_nm), "voxel_size_nm": list(VOXEL), "measure_one_tile_s": measure_s,
        "build_s": build_s, "db_mb": db_mb, "embedding_load_s": load_s, "queries": queries,
        "sqlite": sqlite3.sqlite_version, "python": platform.python_version(), "machine": platform.machine(),
        "command": "nice -n 19 .venv/bin/python benchmarks/object_index.py",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))

    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"{len(table)} objects ({len(base)} per tile x {grid[0]} x {grid[1]} tiles; {counts}); "
                  f"measure one tile {measure_s:.2f} s; build {build_s:.2f} s; {db_mb:.1f} MiB; "
                  f"embedding load {load_s * 1e3:.0f} ms")
    out = Table("query", "median ms", "p95 ms", "repeats", "median rows")
    for name, q in queries.items():
        out.add_row(name, f"{q['median_ms']:.2f}", f"{q['p95_ms']:.2f}", str(q["repeats"]), f"{q['median_rows']:.0f}")
    console.print(out)
    console.print(f"results: {args.json}")


if __name__ == "__main__":
    main()

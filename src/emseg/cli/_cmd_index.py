"""``emseg index`` and ``emseg query``: build and ask an object index (:mod:`emseg.analysis._index`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from emseg.cli._app import QUIET, _fail, _setup, _user_errors, console
from emseg.io import open_image, read_image, write_image, write_table

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

#: Columns shown on the terminal, in this order, when present (``--out`` keeps them all).
_SHOWN = ("rank", "id_a", "id_b", "distance", "centroid_distance", "object_id", "class_name", "voxel_count",
          "volume", "area", "sphericity", "circularity", "elongation", "cz_nm", "cy_nm", "cx_nm")
_MAX_ROWS = 20


def index(
    table: Annotated[Path, typer.Argument(help="Object table (.parquet or .csv), one row per object.")],
    db: Annotated[Path, typer.Option("--db", help="SQLite index file to write.")] = Path("objects.sqlite"),
    voxel_size: Annotated[Optional[tuple[float, float, float]], typer.Option(
        help="Voxel size Z Y X in nm (boxes are stored in nm); default the Parquet table's own, else 1 1 1.")] = None,
    embedding: Annotated[str, typer.Option(
        help="'auto' (table columns emb_0..emb_k if present, else shape/intensity descriptors), "
             "'descriptors', or comma-separated table columns.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing index.")] = False,
    quiet: QUIET = False,
) -> None:
    """Index the objects of TABLE in SQLite: R*Tree on bounding boxes plus an appearance embedding."""
    _setup(quiet)
    from emseg.analysis import ObjectIndex

    try:
        emb = embedding if embedding in ("auto", "descriptors") else [c.strip() for c in embedding.split(",")]
        with ObjectIndex.build(table, db, voxel_size=voxel_size, overwrite=overwrite, embedding=emb) as built:
            counts = ", ".join(f"{name} {n}" for name, n in built.class_counts.items())
            console.print(f"index: {db}  ({len(built)} objects: {counts}; embedding: "
                          f"{', '.join(built.embedding_names)})")
    except _user_errors() as err:
        _fail(err)


def query(
    db: Annotated[Path, typer.Argument(help="Object index from `emseg index`.")],
    class_name: Annotated[Optional[str], typer.Option("--class", help="Class name (or id).")] = None,
    min_volume: Annotated[Optional[float], typer.Option(
        help="Smallest volume (nm^3); area (nm^2) for an index of 2-D objects.")] = None,
    max_volume: Annotated[Optional[float], typer.Option(help="Largest volume (nm^3), or area.")] = None,
    min_elongation: Annotated[Optional[float], typer.Option(help="Smallest elongation.")] = None,
    max_elongation: Annotated[Optional[float], typer.Option(help="Largest elongation.")] = None,
    range_: Annotated[Optional[list[str]], typer.Option(
        "--range", help="COLUMN:LOW:HIGH on any numeric column; leave a side empty for no bound. Repeatable.")] = None,
    box: Annotated[Optional[tuple[float, float, float, float, float, float]], typer.Option(
        help="Region Z0 Y0 X0 Z1 Y1 X1 in nm.")] = None,
    box_mode: Annotated[str, typer.Option(
        help="'within' (box inside the region) or 'intersects'; default within, intersects with --near.")] = "",
    near: Annotated[Optional[str], typer.Option(
        help="Pairs: objects of --class within --distance nm (bbox-to-bbox gap) of objects of this class.")] = None,
    distance: Annotated[Optional[float], typer.Option(help="Distance in nm for --near.")] = None,
    like: Annotated[Optional[int], typer.Option(help="The --k objects most similar to this object id.")] = None,
    like_crop: Annotated[Optional[tuple[Path, Path]], typer.Option(
        help="RAW MASK: the --k objects most similar to the largest object of MASK (mask or labels) in RAW.")] = None,
    k: Annotated[int, typer.Option(help="Number of similar objects.")] = 10,
    metric: Annotated[str, typer.Option(help="euclidean or cosine, for --like / --like-crop.")] = "euclidean",
    limit: Annotated[Optional[int], typer.Option(help="At most this many rows (label and box queries).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write all result rows (.csv or .parquet).")] = None,
    crops: Annotated[Optional[tuple[Path, Path]], typer.Option(
        help="DIR RAW_IMAGE: write each result's raw crop (box + --margin voxels) as DIR/object_ID.tif.")] = None,
    margin: Annotated[int, typer.Option(help="Voxels added around each box by --crops.")] = 8,
    quiet: QUIET = False,
) -> None:
    """Ask an object index: label/range, box, proximity (--near) or similarity (--like, --like-crop) queries."""
    _setup(quiet)
    from emseg.analysis import ObjectIndex

    try:
        kinds = [name for name, given in (("--near", near), ("--like", like), ("--like-crop", like_crop))
                 if given is not None]
        if len(kinds) > 1:
            raise ValueError(f"use only one of {', '.join(kinds)}")
        ranges = _ranges(min_volume, max_volume, min_elongation, max_elongation, range_ or [])
        if kinds and ranges:
            raise ValueError(f"ranges (--min-volume, --range, ...) apply to label queries, not to {kinds[0]}")
        with ObjectIndex.open(db) as idx:
            if "volume" in ranges and "volume" not in idx.columns and "area" in idx.columns:
                ranges["area"] = ranges.pop("volume")  # 2-D objects (measure_objects mode="2d")
            if near is not None:
                if class_name is None or distance is None:
                    raise ValueError("--near needs --class (the objects asked about) and --distance (nm)")
                result = idx.near(class_name, near, distance, box=box, box_mode=box_mode or "intersects")
            elif like is not None or like_crop is not None:
                if box is not None:
                    raise ValueError("--box does not apply to --like / --like-crop")
                descriptors = None if like_crop is None else _crop_descriptors(idx, *like_crop)
                result = idx.similar(like, descriptors=descriptors, k=k, metric=metric, class_name=class_name)
            else:
                result = idx.query(class_name=class_name, ranges=ranges, box=box, box_mode=box_mode or "within",
                                   limit=limit)
            _print(result)
            if out is not None:
                write_table(result, out)
                console.print(f"results: {out}")
            if crops is not None:
                ids = result["id_a" if "id_a" in result else "object_id"].drop_duplicates().tolist()
                written = _write_crops(idx, ids, crops[0], crops[1], margin)
                console.print(f"crops: {written} TIFF files in {crops[0]}")
    except _user_errors() as err:
        _fail(err)


def _ranges(min_volume, max_volume, min_elongation, max_elongation, texts: list[str]) -> dict:
    ranges: dict[str, tuple[Optional[float], Optional[float]]] = {}
    if min_volume is not None or max_volume is not None:
        ranges["volume"] = (min_volume, max_volume)
    if min_elongation is not None or max_elongation is not None:
        ranges["elongation"] = (min_elongation, max_elongation)
    for text in texts:
        parts = text.split(":")
        try:
            if len(parts) != 3 or not parts[0]:
                raise ValueError
            low, high = (float(p) if p.strip() else None for p in parts[1:])
        except ValueError:
            raise ValueError(f"--range {text!r}: expected COLUMN:LOW:HIGH, e.g. sphericity:0.5: or volume::1e6") \
                from None
        ranges[parts[0]] = (low, high)
    return ranges


def _crop_descriptors(idx, raw_path: Path, mask_path: Path):
    raw, mask = read_image(raw_path), read_image(mask_path)
    if raw.shape != mask.shape:
        raise ValueError(f"{raw_path} has shape {raw.shape} but {mask_path} has {mask.shape}")
    if raw.shape[0] == 1:
        raw, mask = raw[0], mask[0]
    return idx.describe_crop(raw, mask)


def _write_crops(idx, ids: list[int], folder: Path, raw_path: Path, margin: int) -> int:
    """Raw crops (voxel box + ``margin``, clipped to the image) of objects ``ids`` as TIFF."""
    import numpy as np

    if margin < 0:
        raise ValueError(f"--margin must be >= 0, got {margin}")
    if not ids:
        return 0
    needed = [f"bbox_{a}{e}" for e in "01" for a in "zyx"]
    missing = [c for c in needed if c not in idx.columns]
    if missing:
        raise ValueError(f"{idx.path} has no voxel boxes ({', '.join(missing)}); cannot cut crops")
    rows = idx.rows(ids).set_index("object_id")
    folder.mkdir(parents=True, exist_ok=True)
    with open_image(raw_path) as image:
        shape = image.shape
        for oid in ids:
            row = rows.loc[oid]
            lo = [max(0, int(row[f"bbox_{a}0"]) - margin) for a in "zyx"]
            hi = [min(s, int(row[f"bbox_{a}1"]) + margin) for a, s in zip("zyx", shape)]
            if any(h <= lo_ for lo_, h in zip(lo, hi)):
                raise ValueError(f"object {oid} lies outside {raw_path} (shape {shape}); is it the indexed image?")
            crop = np.asarray(image.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
            write_image(folder / f"object_{oid}.tif", crop, voxel_size=idx.voxel_size, overwrite=True)
    return len(ids)


def _print(result: pd.DataFrame) -> None:
    from rich.table import Table

    shown = [c for c in _SHOWN if c in result.columns]
    table = Table(*shown, title=f"{len(result)} result(s)", title_justify="left")
    for row in result[shown].head(_MAX_ROWS).itertuples(index=False):
        table.add_row(*(_cell(v) for v in row))
    console.print(table)
    if len(result) > _MAX_ROWS:
        console.print(f"... {len(result) - _MAX_ROWS} more row(s); use --out to save them all")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def register(app: typer.Typer) -> None:
    """Add the ``index`` and ``query`` commands to ``app``."""
    app.command("index")(index)
    app.command("query")(query)

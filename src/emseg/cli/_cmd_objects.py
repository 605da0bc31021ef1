"""``emseg objects`` and ``emseg fractions``: tables of objects and volume fractions from a label image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from emseg.cli._app import CLASSES_FROM_MODEL, CLASS_NAMES, QUIET, TABLE_OUT, _fail, _setup, _user_errors, console
from emseg.io import open_image

__all__ = ["register"]


def _class_names(classes: Optional[str], model: Optional[Path]) -> list[str] | None:
    if classes:
        return [c.strip() for c in classes.split(",")]
    if model is not None:
        from emseg.models import load_checkpoint

        return list(load_checkpoint(model)["classes"])
    return None


def _distance_pairs(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        source, sep, target = item.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(f"--distance-to takes CLASS=OTHER (e.g. mitochondrion=membrane); got {item!r}")
        out[source.strip()] = target.strip()
    return out


def _naming(err: BaseException, path: str, *others: object) -> BaseException:
    """The error itself when its message names one of the files, else a ValueError prefixed with ``path``."""
    text = str(err)
    if isinstance(err, OSError) or any(str(p) in text for p in (path, *others) if p is not None):
        return err
    return ValueError(f"{path}: {text}")


def _summary(df, title: str):
    from rich.table import Table

    size = "volume" if "volume" in df.columns else "area"
    unit = "nm^3" if size == "volume" else "nm^2"
    table = Table("class", "objects", f"median {size}", "median voxels", "median equivalent diameter",
                  title=f"{title} (physical sizes in {unit} / nm when the voxel size is in nm)", title_justify="left")
    for name, group in df.groupby("class_name", sort=False):
        table.add_row(str(name), str(len(group)), f"{group[size].median():.6g}", f"{group['voxel_count'].median():.6g}",
                      f"{group['equivalent_diameter'].median():.4g}")
    return table


def objects(
    labels: Annotated[str, typer.Argument(help="Label image (one value per class): .tif, .zarr, file.h5:dataset, ...")],
    out: TABLE_OUT,
    image: Annotated[Optional[str], typer.Option(help="Raw image for mean/std intensity per object.")] = None,
    voxel_size: Annotated[Optional[tuple[float, float, float]], typer.Option(
        help="Voxel size Z Y X in nm (default: from the file, else 1 1 1).")] = None,
    classes: CLASS_NAMES = None,
    model: CLASSES_FROM_MODEL = None,
    class_id: Annotated[Optional[list[int]], typer.Option(
        "--class-id", help="Label value to measure (repeatable); default every non-zero class.")] = None,
    mode: Annotated[str, typer.Option(help="3d: 3-D components; 2d: components per z-slice.")] = "3d",
    connectivity: Annotated[Optional[int], typer.Option(help="6/18/26 (3d, default 26) or 4/8 (2d, default 8).")] = None,
    split_touching: Annotated[bool, typer.Option(help="Split touching objects (distance-transform watershed).")] = False,
    min_distance: Annotated[int, typer.Option(help="Smallest seed spacing for --split-touching, in voxels.")] = 5,
    distance_to: Annotated[Optional[list[str]], typer.Option(
        help="CLASS=OTHER: distance from each CLASS object to the nearest OTHER voxel (repeatable).")] = None,
    block_shape: Annotated[Optional[tuple[int, int, int]], typer.Option(
        help="Process blockwise with blocks of Z Y X voxels.")] = None,
    quiet: QUIET = False,
) -> None:
    """One row per object: size, surface, bounding box, centroid, axes, intensity, distances."""
    _setup(quiet)
    from emseg.analysis import measure_objects, write_table

    try:
        names = _class_names(classes, model)
        if voxel_size is None:
            with open_image(labels) as opened:
                voxel_size = opened.voxel_size
            if voxel_size is None:
                console.print(f"{labels}: no voxel size in the file and none given; sizes are in voxels")
        df = measure_objects(
            labels, image=image, voxel_size=voxel_size, classes=names, class_ids=class_id,
            connectivity=connectivity, mode=mode, split_touching=split_touching, min_distance=min_distance,
            distance_to=_distance_pairs(distance_to), block_shape=block_shape, progress=not quiet,
        )
        written = write_table(df, out)
    except _user_errors() as err:
        _fail(_naming(err, labels, image, model, *out))
    console.print(_summary(df, f"{len(df)} objects ({mode} mode) in {labels}"))
    console.print("table: " + ", ".join(written))


def fractions(
    labels: Annotated[str, typer.Argument(help="Label image (one value per class).")],
    out: TABLE_OUT,
    classes: CLASS_NAMES = None,
    model: CLASSES_FROM_MODEL = None,
    cells: Annotated[Optional[str], typer.Option(help="Cell instance mask: 0 outside, 1..N cell ids.")] = None,
    mask: Annotated[Optional[str], typer.Option(help="Region mask: only non-zero voxels are counted.")] = None,
    compare: Annotated[Optional[str], typer.Option(
        help="Second label image (e.g. a prediction); report both fractions and OTHER - LABELS.")] = None,
    quiet: QUIET = False,
) -> None:
    """Fraction of each cell's (or the region's) volume occupied by each class."""
    _setup(quiet)
    from emseg.analysis import compare_fractions, volume_fractions, write_table

    try:
        names = _class_names(classes, model)
        if names is None:
            raise ValueError("fractions needs class names: give --classes a,b,c or --model RUN_DIR")
        if compare is None:
            df = volume_fractions(labels, classes=names, cells=cells, mask=mask)
        else:
            df = compare_fractions(labels, compare, classes=names, cells=cells, mask=mask)
        written = write_table(df, out)
    except _user_errors() as err:
        _fail(_naming(err, labels, cells, mask, compare, model, *out))
    console.print(_fraction_summary(df, compare is not None))
    console.print("table: " + ", ".join(written))


def _fraction_summary(df, compared: bool):
    from rich.table import Table

    if compared:
        table = Table("class", "mean fraction (labels)", "mean fraction (compare)", "mean difference",
                      title=f"volume fractions over {df['cell_id'].nunique()} cell(s)", title_justify="left")
        for name, group in df.groupby("class_name", sort=False):
            table.add_row(str(name), f"{group['fraction_a'].mean():.4f}", f"{group['fraction_b'].mean():.4f}",
                          f"{group['difference'].mean():+.4f}")
        return table
    table = Table("class", "mean fraction", "min", "max",
                  title=f"volume fractions over {len(df)} cell(s)", title_justify="left")
    for column in df.columns:
        if column.startswith("fraction_"):
            values = df[column]
            table.add_row(column[len("fraction_"):], f"{values.mean():.4f}", f"{values.min():.4f}",
                          f"{values.max():.4f}")
    return table


def register(app: typer.Typer) -> None:
    """Add the ``objects`` and ``fractions`` commands to ``app``."""
    app.command("objects")(objects)
    app.command("fractions")(fractions)

"""``emseg suggest``: the slices (or blocks) of an image where one more label helps most."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from emseg._progress import progress_bar
from emseg.cli._app import QUIET, _fail, _setup, _user_errors, console
from emseg.io import open_image

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``suggest`` command to ``app``."""
    app.command(name="suggest")(suggest)


def suggest(
    model: Annotated[Path, typer.Argument(help="Run directory, model.pt, ensemble, or exported .onnx / bioimage.io .zip.")],
    image: Annotated[str, typer.Argument(help="Image or stack: .tif, PNG folder, file.h5:dataset, store.zarr/path, .mrc")],
    k: Annotated[int, typer.Option("--k", "-k", help="How many slices (or blocks) to suggest.")] = 5,
    method: Annotated[str, typer.Option(help="auto (disagreement for an ensemble, else tta), disagreement (ensemble "
                                             "members' mutual information), entropy (of the mean probability) or "
                                             "tta (variance over flips, one model).")] = "auto",
    block: Annotated[Optional[tuple[int, int]], typer.Option(help="Rank in-plane blocks Y X instead of whole slices.")] = None,
    exclude: Annotated[Optional[str], typer.Option(help="Slices not to suggest (already labelled), e.g. '0:3,7'.")] = None,
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the ranking as JSON on stdout.")] = False,
    quiet: QUIET = False,
) -> None:
    """Rank IMAGE's slices by MODEL's uncertainty and print the top K with their scores (label those next)."""
    _setup(quiet or as_json)
    from emseg.active import resolve_method, suggest_slices
    from emseg.inference import load_predictor

    try:
        if k < 1:
            raise ValueError(f"--k must be at least 1, got {k}")
        predictor = load_predictor(model, precision=precision, tta=False)
        used = resolve_method(predictor, method)
        with open_image(image) as data:
            volume = data.array
            with progress_bar("Ranking slices", total=volume.shape[0], unit="slice", enabled=not (quiet or as_json)) as advance:
                found = suggest_slices(predictor, volume, k=k, method=used, block=block, exclude=exclude,
                                       progress=advance)
            shape = [int(s) for s in volume.shape]
    except _user_errors() as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps({"model": str(model), "image": image, "shape": shape, "method": used,
                               "suggestions": [s.as_dict() for s in found]}, indent=2))
        return
    from rich.table import Table

    unit = "nats" if used in ("entropy", "disagreement") else "variance"
    table = Table("rank", "z", "y", "x", f"score ({used}, {unit})",
                  title=f"Slices to label next in {image} ({shape[0]} slices)", title_justify="left")
    for rank, s in enumerate(found, 1):
        table.add_row(str(rank), str(s.z), f"{s.y[0]}:{s.y[1]}", f"{s.x[0]}:{s.x[1]}", f"{s.score:.5g}")
    console.print(table)

"""``emseg weights``: write the loss weight map of a configuration, to inspect it in Fiji / napari."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from emseg.cli._app import QUIET_LOGS, _fail, _setup, _user_errors, console

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``weights`` command to ``app``."""
    app.command(name="weights")(weights)


def weights(
    config: Annotated[Path, typer.Argument(help="YAML configuration with training.weight_map.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="float32 TIFF to write (Z, Y, X) like the labels.")],
    every_entry: Annotated[bool, typer.Option("--all", help="One file per data.train entry: OUT_<i>.tif.")] = False,
    recipe: Annotated[Optional[str], typer.Option(help="Training preset merged under CONFIG.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
    quiet: QUIET_LOGS = False,
) -> None:
    """Compute training.weight_map (Guay or U-Net border) of the training labels and write it as TIFF."""
    _setup(quiet)
    from emseg.config import load_config
    from emseg.training import write_weight_maps

    try:
        cfg = load_config(config, recipe=recipe)
        paths = write_weight_maps(cfg, out, every_entry=every_entry, overwrite=overwrite)
    except _user_errors() as err:
        _fail(err)
    for path in paths:
        console.print(f"weight map: {path}")

"""``emseg export``: a trained model (or ensemble) as ONNX, TorchScript or a bioimage.io package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from emseg.cli._app import QUIET_LOGS, _fail, _setup, _user_errors, console

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to ``app``."""
    app.command(name="export")(export)


def export(
    model: Annotated[Path, typer.Argument(help="Run directory or model.pt (a single network or an ensemble).")],
    format: Annotated[str, typer.Option("--format", "-f", help="bioimageio (.zip), onnx (.onnx) or torchscript (.pt).")],  # noqa: A002
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    window: Annotated[Optional[list[int]], typer.Option(help="Tile size readers should feed: Y X (3-D: Z Y X); "
                                                        "default the model's. Repeat: --window 256 --window 256.")] = None,
    sample: Annotated[Optional[Path], typer.Option(help="Raw EM image the export is checked on (and bioimage.io's "
                                                   "test tensors and cover); default emseg's embedded EPFL crop.")] = None,
    name: Annotated[Optional[str], typer.Option(help="bioimage.io: model name.")] = None,
    author: Annotated[Optional[list[str]], typer.Option(help="bioimage.io: an author (repeatable).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    quiet: QUIET_LOGS = False,
) -> None:
    """Export MODEL so other tools run it; the written file is checked against torch on a real EM tile.

    ONNX (opset 17, dynamic batch and y/x) runs in onnxruntime, TorchScript (frozen, CPU) in libtorch, and
    the bioimage.io zip in ilastik, deepImageJ, Fiji, QuPath and bioimageio.core. `emseg predict` takes
    the .onnx and .zip files directly.
    """
    _setup(quiet)
    from emseg.export import export_model

    try:
        result = export_model(model, out, format=format, window=window or None, sample=sample, overwrite=overwrite,
                              name=name, authors=author or None)
    except _user_errors() as err:
        _fail(err)
    console.print(f"{format}: {result['path']}  (checked on a real tile: max probability difference "
                  f"{result.get('max_prob_diff', 0.0):.1e} to the torch network"
                  + (", bioimage.io validation and model test passed" if format == "bioimageio" else "") + ")")

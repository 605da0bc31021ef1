"""``emseg explain``: Grad-CAM maps showing which image regions drove a class."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from emseg.cli._app import QUIET_LOGS, _fail, _setup, _user_errors, console

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``explain`` command to ``app``."""
    app.command(name="explain")(explain)


def explain(
    models: Annotated[list[Path], typer.Argument(
        help="Run directory or model.pt; several for an ensemble (one subfolder per member).",
        metavar="MODEL")],
    image: Annotated[str, typer.Argument(help="EM image or stack: .tif, PNG, file.h5:dataset, store.zarr/path, .mrc",
                                         metavar="IMAGE")],
    classes: Annotated[list[str], typer.Option("--class", "-c", help="Class to explain; repeat for several.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder for gradcam_<class>.npy/.png and gradcam_summary.json.")],
    layer: Annotated[str, typer.Option(help=(
        "'bottleneck' (the deepest encoder) or a module name of the network, e.g. 'decoders.3' (a low raw max "
        "means the layer contributes little: U-Net skips can bypass the bottleneck)."))] = "bottleneck",
    slice_: Annotated[int, typer.Option("--slice", "-z", help="Slice of a stack to explain.")] = 0,
    mask: Annotated[Optional[str], typer.Option(
        help="Target mask image (non-zero = target); default: pixels predicted as the class.")] = None,
    array_format: Annotated[str, typer.Option("--format", help="Map file format: npy or tif.")] = "npy",
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    quiet: QUIET_LOGS = False,
) -> None:
    """Grad-CAM: where in IMAGE the network found evidence for each --class (heat map over the slice)."""
    _setup(quiet)
    from emseg.analysis import explain as _explain

    try:
        summary = _explain(models, image, classes=classes, out_dir=out, layer=layer, z=slice_, mask_path=mask,
                           array_format=array_format, overwrite=overwrite)
    except _user_errors() as err:
        _fail(err)
    from rich.table import Table

    table = Table("model", "class", "layer", "target px", "raw max", "map on target", "overlay",
                  title=f"Grad-CAM, slice {slice_}, target: {summary['target']}", title_justify="left")
    for member in summary["members"]:
        for name, info in member["classes"].items():
            table.add_row(member["model"], name, info["layer"], str(info["target_pixels"]), f"{info['raw_max']:.3g}",
                          f"{100 * info['mass_in_target']:.0f} %", str(out / info["png"]))
    console.print(table)
    console.print(f"summary: {out / 'gradcam_summary.json'}")

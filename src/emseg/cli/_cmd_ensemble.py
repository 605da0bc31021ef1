"""``emseg ensemble`` and the ``--seeds`` / ``--folds`` modes of ``emseg train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from emseg.cli._app import QUIET, _fail, _setup, _user_errors, console

__all__ = ["parse_seeds", "register", "train_many"]


def register(app: typer.Typer) -> None:
    """Add the ``ensemble`` command to ``app``."""
    app.command(name="ensemble")(ensemble)


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and value != value) else f"{value:.4f}"


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2,3"`` or ``"0:4"`` -> ``[0, 1, 2, 3]``."""
    try:
        if ":" in text and "," not in text:
            start, _, stop = text.partition(":")
            return list(range(int(start), int(stop)))
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected integers like '0,1,2,3' or a range '0:4'") from None


def train_many(config, out: Path, *, seeds: str | None, folds: int | None, fold_split: str, overwrite: bool,
               progress: bool) -> None:
    """``emseg train --seeds`` / ``--folds``: train the runs and print the ranking or the fold table."""
    from rich.table import Table

    from emseg.ensemble import train_folds, train_seeds

    if seeds is not None and folds is not None:
        raise ValueError("--seeds and --folds cannot be combined; run them into different --out folders")
    if seeds is not None:
        result = train_seeds(config, out, seeds=parse_seeds(seeds), overwrite=overwrite, progress=progress)
        table = Table("rank", "seed", "val mean IoU", "val fg IoU", "best epoch", "epochs", "run", "status",
                      title="seeds ranked by best validation mean IoU", title_justify="left")
        for row in result.rows:
            table.add_row(str(row["rank"]), str(row["seed"]), _fmt(row["val_mean_iou"]),
                          _fmt(row["val_mean_iou_foreground"]), str(row["best_epoch"]), str(row["epochs"]),
                          row["run_dir"], row["status"])
        console.print(table)
        console.print(f"ranking: {out / 'ranking.json'}")
        return
    result = train_folds(config, out, folds=folds, split=fold_split, overwrite=overwrite, progress=progress)
    table = Table("fold", "val mean IoU", "val fg IoU", *result.classes,
                  title=f"{folds}-fold cross-validation ({fold_split} folds), best checkpoint per fold",
                  title_justify="left")
    for row in [*result.rows, {"fold": "mean", **result.mean}]:
        table.add_row(str(row["fold"]), _fmt(row["val_mean_iou"]), _fmt(row["val_mean_iou_foreground"]),
                      *(_fmt(row["val_iou"].get(c)) for c in result.classes))
    console.print(table)
    console.print(f"folds: {out / 'folds.json'}, {out / 'folds.csv'}")


def ensemble(
    members: Annotated[list[Path], typer.Argument(
        help="Run directories, model.pt files, or a --seeds/--folds output folder (expands to its runs).",
        metavar="RUN_DIR...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the ensemble's model.pt and ensemble.json.")],
    method: Annotated[str, typer.Option(help="mean (average probabilities), weighted (grid-searched weights, "
                                             "WAE-Net) or vote (majority of labels).")] = "weighted",
    top: Annotated[Optional[int], typer.Option(help="Keep the K members with the best validation score.")] = None,
    step: Annotated[float, typer.Option(help="Weight grid step on the simplex (0.1 or finer).")] = 0.1,
    foreground: Annotated[bool, typer.Option(help="Score by mean IoU over foreground classes, not all classes.")] = False,
    val: Annotated[Optional[tuple[str, str]], typer.Option(
        help="Validation IMAGE LABELS (default: the validation data of the members' training config).",
        metavar="IMAGE LABELS")] = None,
    val_slices: Annotated[Optional[str], typer.Option(help="z slices of --val to use, e.g. '24:30'.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing ensemble in --out.")] = False,
    quiet: QUIET = False,
) -> None:
    """Combine trained models into one model.pt that predict / evaluate / explain take like a single model."""
    _setup(quiet)
    from rich.table import Table

    from emseg.ensemble import ValidationSource, build_ensemble

    try:
        source = None if val is None else ValidationSource(val[0], val[1], val_slices)
        if val is None and val_slices is not None:
            raise ValueError("--val-slices needs --val IMAGE LABELS")
        result = build_ensemble(members, out, method=method, top=top, step=step, foreground=foreground, val=source,
                                overwrite=overwrite, progress=not quiet)
    except _user_errors() as err:
        _fail(err)
    report = result.report
    classes = report["classes"]
    table = Table("candidate", "weight", "val mean IoU", "val fg IoU", *classes,
                  title=f"validation scores ({report['metric']} chooses; {report.get('validation_voxels', 0)} voxels)",
                  title_justify="left")
    for row in report["members"]:
        if "val_iou" not in row:
            continue
        table.add_row(row["name"] + ("" if row.get("kept", True) else " (not in top)"), f"{row['weight']:.2f}",
                      _fmt(row["val_mean_iou"]), _fmt(row["val_mean_iou_foreground"]),
                      *(_fmt(row["val_iou"][c]) for c in classes))
    for key, label in (("mean", "equal-weight mean"), ("vote", "majority vote"), ("weighted", "weighted (chosen)")):
        if key in report:
            entry = report[key]
            weights = " ".join(f"{w:.2f}" for w in entry.get("weights", [])) or "-"
            table.add_row(label, weights, _fmt(entry["val_mean_iou"]), _fmt(entry["val_mean_iou_foreground"]),
                          *(_fmt(entry["val_iou"][c]) for c in classes))
    if table.rows:
        console.print(table)
        metric = report["metric"]
        best = max((r for r in report["members"] if r.get("kept", True) and metric in r),
                   key=lambda r: -1.0 if r[metric] is None else r[metric])
        line = [f"best member {best['name']}: {_fmt(best[metric])}"]
        line += [f"{label}: {_fmt(report[key][metric])}" for key, label in
                 (("mean", "equal-weight mean"), ("vote", "majority vote"), ("weighted", "weighted"))
                 if key in report]
        console.print(f"validation {metric} - " + "; ".join(line))
    chosen = ", ".join(f"{n}={w:.2f}" for n, w in zip(result.names, result.weights))
    console.print(f"ensemble ({result.method}): {chosen}\nmodel: {result.model_path}\n"
                  f"report: {result.out_dir / 'ensemble.json'}")

"""``emseg benchmark``: a matrix of models x losses x seeds on one data set, with a results table and HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from emseg.cli._app import QUIET, _fail, _setup, _user_errors, console

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``benchmark`` command to ``app``."""
    app.command(name="benchmark")(benchmark)


def benchmark(
    bench_file: Annotated[Path, typer.Argument(help="BENCH.yaml describing data, models, losses, seeds and budget.",
                                                metavar="BENCH.yaml")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: runs/, results.csv, results.json, report.html.")],
    only: Annotated[Optional[list[str]], typer.Option(help="Run only runs whose name contains this (repeatable).")] = None,
    report_only: Annotated[bool, typer.Option(help="Only rewrite report.html from OUT/results.json.")] = False,
    no_report: Annotated[bool, typer.Option(help="Skip the HTML report (no matplotlib needed).")] = False,
    quiet: QUIET = False,
) -> None:
    """Train and score every run of BENCH.yaml (finished runs are not retrained), then write the report."""
    _setup(quiet)
    try:
        if report_only:
            from emseg.benchmark import write_report

            path = write_report(out / "results.json", out / "report.html")
            console.print(f"report: {path}")
            return
        from emseg.benchmark import run_benchmark

        results = run_benchmark(bench_file, out, only=only, report=not no_report, progress=not quiet)
    except (_user_errors() + (ImportError,)) as err:
        _fail(err)
    from rich.table import Table

    table = Table("run", "mIoU (all)", "mIoU (fg)", "params", "train s", "MVox/s", title="benchmark", title_justify="left")
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    for r in results["runs"]:
        m = r["metrics"]
        table.add_row(r["run"], fmt(m.get("mean_iou"), ".3f"), fmt(m.get("mean_iou_foreground"), ".3f"),
                      fmt(r["parameters"], ","), fmt(r["train_seconds"], ".1f"), fmt(r["mvox_per_s"], ".3f"))
    console.print(table)
    console.print(f"results: {out / 'results.csv'}, {out / 'results.json'}"
                  + ("" if no_report else f"\nreport:  {out / 'report.html'}"))

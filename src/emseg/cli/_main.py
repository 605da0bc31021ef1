"""``emseg`` command-line interface (typer). Each command calls the public API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from emseg.cli._app import (  # noqa: F401 - _escape, err_console: used by the commands below and tests
    _QUIET,
    _escape,
    _fail,
    _fraction,
    _setup,
    _user_errors,
    app,
    console,
    err_console,
)
from emseg.io import open_image, supported_formats


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML configuration (see README).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory for model.pt, metrics.jsonl, ...")],
    max_minutes: Annotated[Optional[float], typer.Option(help="Override training.max_minutes.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start again in a non-empty run directory.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from last.pt in the run directory.")] = False,
    seeds: Annotated[Optional[str], typer.Option(help="Seed ensemble: one run per seed into OUT/seed-<s>/, e.g. "
                                                      "0,1,2,3; ranked in OUT/ranking.json.")] = None,
    folds: Annotated[Optional[int], typer.Option(help="K-fold cross-validation over the training slices into "
                                                      "OUT/fold-<i>/; table in OUT/folds.json.")] = None,
    fold_split: Annotated[str, typer.Option(help="--folds: contiguous or interleaved slice blocks.")] = "contiguous",
    recipe: Annotated[Optional[str], typer.Option(help="Training preset (see 'emseg recipes'); CONFIG's keys override it.")] = None,
    init: Annotated[Optional[Path], typer.Option(help="Start from the matching weights of a model.pt, run directory "
                                                      "or `emseg pretrain` output (overrides model.init).")] = None,
    quiet: _QUIET = False,
) -> None:
    """Train a model; the best checkpoint (by training.checkpoint_metric, default validation mean IoU) is OUT/model.pt."""
    _setup(quiet)
    from emseg.config import load_config
    from emseg.training import TrainingInterrupted
    from emseg.training import train as _train

    try:
        if max_minutes is not None and not max_minutes > 0:  # the option, not the YAML file, is at fault
            raise ValueError(f"--max-minutes must be a number of minutes above 0, got {max_minutes:g}; "
                             f"leave it out to use training.max_minutes of {config}")
        overrides = {"training": {"max_minutes": max_minutes}} if max_minutes is not None else {}
        if init is not None:  # relative to the working directory, not to CONFIG's folder
            overrides["model"] = {"init": str(init.expanduser().resolve())}
        cfg = load_config(config, overrides=overrides or None, recipe=recipe)
        if seeds is not None or folds is not None:  # several runs: emseg.ensemble (resumable, skips finished runs)
            from emseg.cli._cmd_ensemble import train_many

            return train_many(cfg, out, seeds=seeds, folds=folds, fold_split=fold_split, overwrite=overwrite,
                              progress=not quiet)
        result = _train(cfg, out, overwrite=overwrite, resume=resume, progress=not quiet)
    except _user_errors() as err:
        _fail(err)
    except TrainingInterrupted as stop:  # Ctrl-C: both checkpoints kept; 130 = 128 + SIGINT, as shells report
        again = ("run the same command again" if seeds is not None or folds is not None
                 else f"emseg train {config} --out {out} --resume")
        err_console.print(f"interrupted after epoch {stop.epochs}: best model {_escape(str(stop.model_path))} "
                          f"(epoch {stop.best_epoch}), state to resume from {_escape(str(stop.last_path))}; "
                          f"to continue: {_escape(again)}")
        raise typer.Exit(code=130) from None
    except KeyboardInterrupt:
        err_console.print(f"interrupted before the first epoch finished: no model saved in {_escape(str(out))}")
        raise typer.Exit(code=130) from None
    console.print(f"model: {result.model_path}  (best epoch {result.best_epoch}, "
                  f"validation mean IoU {result.best_val_mean_iou:.3f}; stopped: {result.stop_reason})")


@app.command()
def calibrate(
    run: Annotated[Path, typer.Argument(help="Run directory of `emseg train` (config.yaml and model.pt).")],
    quiet: _QUIET = False,
) -> None:
    """Fit per-class logit offsets on RUN's validation data (maximising its mean IoU) and store them in model.pt.

    `emseg train` does this itself with training.calibrate: true (off by default: on EPFL it raised the
    validation score but lowered the test score, docs/BENCHMARKS.md); use this for runs trained without it.
    """
    _setup(quiet)
    from emseg.training import calibrate as _calibrate

    try:
        info = _calibrate(run)
    except _user_errors() as err:
        _fail(err)
    console.print(f"logit offsets {info['logit_offsets']}: validation mean IoU {info['val_mean_iou_before']:.4f} -> "
                  f"{info['val_mean_iou_after']:.4f} ({info['pixels']:,} pixels) -> {run / 'model.pt'}")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="Run directory or model.pt file.")],
    input: Annotated[str, typer.Argument(help="Image or stack: .tif, PNG folder, file.h5:dataset, store.zarr/path, "
                                         "volume.n5/path, .mrc; or a quoted pattern of several, e.g. 'raw/*.tif' "
                                         "(one process for all).")],
    output: Annotated[str, typer.Argument(help="Label image to write: .tif, .zarr, file.h5:dataset or .png (2-D); "
                                          "for a pattern INPUT a template such as 'labels/{stem}.zarr'.")],
    probabilities: Annotated[Optional[str], typer.Option(help="Also write class probabilities (.tif, .zarr or .h5).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16.")] = "auto",
    tta: Annotated[bool, typer.Option(help="Test-time augmentation: average over flips (4x slower).")] = False,
    median: Annotated[Optional[int], typer.Option(help="Post-processing: majority (mode) filter of this odd window "
                                                  "size over the labels, e.g. 3 (the median for two classes). In memory only.")] = None,
    min_size: Annotated[Optional[int], typer.Option(help="Post-processing (after --median): remove objects of each "
                                                    "foreground class below N voxels; their voxels take the class "
                                                    "they border most. In memory only.")] = None,
    post_3d: Annotated[bool, typer.Option("--post-3d", help="Post-process as a contiguous volume (3-D window and "
                                          "components); default: each slice on its own.")] = False,
    # Blockwise (a .zarr OUTPUT): see emseg.inference._blockwise.
    block: Annotated[Optional[tuple[int, int, int]], typer.Option(help="Block shape Z Y X (.zarr output).")] = None,
    workers: Annotated[int, typer.Option(help="Dask LocalCluster of N processes, one block at a time each (.zarr output).")] = 0,
    threads: Annotated[Optional[int], typer.Option(help="Torch threads per block, here or on each worker (.zarr output; default 1). "
                                                   "Labels are identical across runs with the same value; on a few-core "
                                                   "machine --threads <cores> without --workers is fastest.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Existing Dask scheduler address, e.g. tcp://host:8786.")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume/--no-resume", help="Continue an unfinished .zarr run (default: yes if same model/input).")] = None,
    ome_zarr: Annotated[bool, typer.Option("--ome-zarr", help="OME-Zarr (NGFF 0.4) label pyramid for napari/neuroglancer.")] = False,
    zarr_format: Annotated[int, typer.Option(help="zarr format 2 or 3 of a plain .zarr output.")] = 3,
    overlap: Annotated[str, typer.Option(help="Window overlap: a fraction, or auto (receptive field / window).")] = "auto",
    window: Annotated[Optional[tuple[int, int]], typer.Option(help="Sliding-window size Y X (default: the model's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Windows per forward pass.")] = None,
    jit: Annotated[bool, typer.Option("--jit", help="CPU: frozen TorchScript network (batch norm folded, oneDNN fusions), "
                                      "1.3-1.6x faster for unet2d after a few seconds of set-up; checked against the eager network. "
                                      "fp32 only: under bf16 (auto on a CPU with native bf16) it is turned off with a warning.")] = False,
    calibration: Annotated[bool, typer.Option("--calibration/--no-calibration",
                                              help="Apply the model's logit offsets fitted on validation after training.")] = True,
    route: Annotated[Optional[str], typer.Option(help="How the network runs (.zarr output): auto (time the routes on a probe, "
                                                 "run the fastest whose labels agree with fp32), auto+int8, default, or a "
                                                 "recorded name such as bf16-eager-cl-t2-w768x1024-b4. Default: auto for "
                                                 "inputs of 2^28 voxels or more without --precision/--jit/--window/"
                                                 "--batch-size/--threads.")] = None,
    max_memory: Annotated[float, typer.Option(help="GB: a tuned route (--route auto) is the fastest whose estimated "
                                              "peak memory fits this; 0 = no limit.")] = 2.0,
    io_threads: Annotated[Optional[int], typer.Option(help="Threads reading blocks ahead, and as many writing "
                                                      "them (.zarr output, this process). Default: 1 on a CPU, up "
                                                      "to 4 on a GPU; more for slow or remote storage.")] = None,
    keep_going: Annotated[bool, typer.Option("--keep-going/--stop-on-error",
                                             help="A pattern INPUT: go on after a volume fails, list the failures "
                                             "at the end (exit 1); rerunning skips the finished outputs.")] = True,
    quiet: _QUIET = False,
) -> None:
    """Segment INPUT with MODEL; write a uint8 label image of the input's shape to OUTPUT.

    A .zarr OUTPUT is segmented block by block (flat memory), resumably, optionally on Dask. A pattern INPUT
    ('raw/*.tif') segments every match in this one process into OUTPUT's template ('labels/{stem}.zarr').
    """
    _setup(quiet)
    from emseg.inference import batch_pairs, is_batch, predict_many
    from emseg.inference import predict as _predict

    options = dict(progress=not quiet, precision=precision, tta=tta, median=median, min_size=min_size,
                   post_3d=post_3d, block=block, workers=workers,
                   threads=threads, scheduler=scheduler, resume=resume, ome_zarr=ome_zarr,
                   zarr_format=zarr_format if zarr_format != 3 else None,
                   window=window, batch_size=batch_size, jit=jit or None,
                   calibrated=None if calibration else False, route=route,
                   max_memory_gb=None if max_memory == 0 else max_memory, io_threads=io_threads)
    interrupted, batch = False, is_batch(input, output)
    try:
        options["overlap"] = overlap if overlap == "auto" else _fraction("--overlap", overlap)
        if batch:
            items = batch_pairs(input, output, probabilities)
            try:
                predict_many(model, items, overwrite=overwrite, keep_going=keep_going, **options)
            except KeyboardInterrupt:
                interrupted = True
        else:
            path = _predict(model, input, output, probabilities=probabilities, overwrite=overwrite, **options)
    except _user_errors() as err:
        _fail(err)
    if batch:
        _print_batch(items, interrupted=interrupted)
        return
    console.print(f"labels: {path}" + (f"\nprobabilities: {probabilities}" if probabilities else ""))
    _print_route(path)


def _print_batch(items, *, interrupted: bool = False) -> None:
    """A line per volume, then the failures (exit 1 if any; 130 if interrupted)."""
    for item in items:
        route = f"  route: {item.route}" if item.route else ""
        took = f"  {item.seconds:.1f} s" if item.status == "done" else ""
        console.print(f"{item.status:8s} {item.input} -> {item.output}{took}{route}")
    failed = [item for item in items if item.status == "failed"]
    counts = {s: sum(item.status == s for item in items) for s in ("done", "skipped", "failed", "pending")}
    console.print(f"{len(items)} volumes: {counts['done']} segmented, {counts['skipped']} finished before, "
                  f"{counts['failed']} failed" + (f", {counts['pending']} not finished" if interrupted else ""))
    if interrupted:
        err_console.print("interrupted: rerun the same command to go on (finished outputs are skipped, an "
                          "unfinished .zarr store resumes from its finished blocks)")
        raise typer.Exit(130)
    if failed:
        for item in failed:
            err_console.print(f"[bold red]failed:[/] {_escape(item.input)}: {_escape(item.error or '')}")
        err_console.print("Fix those inputs and rerun the same command: finished outputs are skipped.")
        raise typer.Exit(1)


def _print_route(output: Path) -> None:
    """The route a blockwise prediction ran (recorded in its store), in one line."""
    from emseg.inference import describe_route, read_run_metadata

    record = (read_run_metadata(output) or {}).get("route") if str(output).lower().endswith(".zarr") else None
    if record:
        console.print(_escape(describe_route(record)))


@app.command()
def evaluate(
    prediction: Annotated[str, typer.Argument(help="Predicted label image.")],
    ground_truth: Annotated[str, typer.Argument(help="Ground-truth label image.")],
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated class names (label i = name i).")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Take class names from this model instead.")] = None,
    ignore_label: Annotated[Optional[int], typer.Option(help="Ground-truth value excluded from the scores.")] = None,
    background: Annotated[int, typer.Option(help="Class index left out of the foreground mean; -1 for none.")] = 0,
    slices: Annotated[Optional[str], typer.Option(help="Score only these z slices, e.g. '24:30' or '0,5'.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the scores as JSON.")] = None,
    metrics: Annotated[Optional[str], typer.Option(help="Metric groups, comma-separated: pixel, auc, sweep, boundary, "
                                                   "objects, hausdorff, or all (see README). Default: the IoU/F1 table only.")] = None,
    probabilities: Annotated[Optional[str], typer.Option(help="Class probabilities from `emseg predict --probabilities` (for auc, sweep).")] = None,
    subset: Annotated[Optional[list[str]], typer.Option(help="Named class subset for mean IoU, e.g. org=mitochondrion,vesicle (repeatable).")] = None,
    per_slice: Annotated[bool, typer.Option(help="Objects and distances per z slice (2-D data sets).")] = False,
    membrane_class: Annotated[Optional[str], typer.Option(help="Class scored as a membrane map by the boundary group (default: class 1 of a binary task).")] = None,
    quiet: _QUIET = False,
) -> None:
    """Per-class IoU, F1, precision, recall, mean IoU and confusion matrix (more with --metrics)."""
    _setup(quiet)
    from emseg.cli import _evaluate_metrics as checks
    from emseg.evaluation import LabelRangeError
    from emseg.evaluation import evaluate as _evaluate

    try:
        names, source = checks.class_names(classes, model)  # both given and different: refused
        pred_in, truth_in = (prediction, ground_truth) if slices is None else _select_slices(prediction, ground_truth, slices)
        checks.check_not_empty(pred_in, truth_in, prediction, ground_truth)
        try:
            result = _evaluate(pred_in, truth_in, classes=names, ignore_label=ignore_label,
                               background=None if background < 0 else background)
        except LabelRangeError as err:
            raise checks.explain_label_error(err, prediction=prediction, ground_truth=ground_truth, source=source,
                                             ignore_label=ignore_label) from None
        checks.check_counted(result, ground_truth, ignore_label, slices)
        scores = None
        if metrics is not None or subset:
            from emseg.cli._evaluate_metrics import evaluate_groups

            scores = evaluate_groups(pred_in, truth_in, result, metrics=metrics, probabilities=probabilities,
                                     subset=subset, slices=slices, ignore_label=ignore_label, per_slice=per_slice,
                                     membrane_class=membrane_class)
    except _user_errors() as err:
        _fail(err)
    console.print(result.to_table())
    _print_confusion(result)
    if scores is not None:
        from emseg.cli._evaluate_metrics import print_groups, save_json

        print_groups(console, scores)
    if json_out is not None:
        if scores is not None:
            save_json(json_out, scores)
        else:
            result.save_json(json_out)
        console.print(f"scores: {json_out}")


def _select_slices(prediction: str, ground_truth: str, slices: str):
    """Read only the selected z slices of both images (lazy readers)."""
    from emseg.data import parse_slices

    with open_image(prediction) as p, open_image(ground_truth) as t:
        if p.array.shape != t.array.shape:
            raise ValueError(f"{prediction} has shape {tuple(p.array.shape)} but {ground_truth} has {tuple(t.array.shape)}")
        zs = parse_slices(slices, p.array.shape[0])
        return (np.stack([np.asarray(p.array[z]) for z in zs]), np.stack([np.asarray(t.array[z]) for z in zs]))


def _print_confusion(result) -> None:
    from rich.table import Table

    table = Table(title="confusion matrix (rows: truth, columns: prediction)", title_justify="left")
    table.add_column("")
    for name in result.classes:
        table.add_column(name, justify="right")
    for name, row in zip(result.classes, result.confusion):
        table.add_row(name, *(str(int(v)) for v in row))
    console.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's outputs.")] = Path("emseg-demo"),
    minutes: Annotated[float, typer.Option(help="Training budget in minutes.")] = 5.0,
    quiet: _QUIET = False,
) -> None:
    """Train on the embedded EPFL crop, segment its held-out crop, print the scores."""
    _setup(quiet)
    from emseg._demo import run_demo

    try:
        outcome = run_demo(out, minutes=minutes, progress=not quiet)
    except _user_errors() as err:
        _fail(err)
    result, baseline = outcome["result"], outcome["baseline"]
    console.print(result.to_table())
    console.print(
        f"mean IoU {result.mean_iou:.3f} (all classes), {result.mean_iou_foreground:.3f} (foreground); "
        f"a predictor that always says the majority class scores {baseline.mean_iou:.3f} / "
        f"{baseline.mean_iou_foreground:.3f}."
    )
    console.print(f"model:         {outcome['run'].model_path}\n"
                  f"prediction:    {outcome['prediction']}\n"
                  f"probabilities: {outcome['probabilities']}\n"
                  f"scores:        {outcome['scores']}\n"
                  f"training log:  {outcome['run'].run_dir / 'metrics.jsonl'}\n"
                  "Open the .tif files in Fiji or napari, or with tifffile.imread in Python.")


@app.command()
def models(quiet: _QUIET = False) -> None:
    """List the registered models with their parameter counts and FLOPs per 512x512 slice (3D: 5x256x256 window)."""
    _setup(quiet)
    from rich.table import Table

    from emseg.models import MODELS, model_cost

    table = Table("name", "backend", "parameters (1 in, 7 classes)", "GFLOPs / window (1 multiply-add = 2)",
                  "description")
    for name in MODELS:
        spec = MODELS.get(name)
        if spec.backend == "torch":
            cost = model_cost(name, in_channels=1, num_classes=7)  # built on the meta device: no weights allocated
            params = f"{cost.parameters / 1e6:.2f} M"
            flops = f"{cost.flops / 1e9:.1f} / {'x'.join(map(str, cost.window))}"
        else:
            params = flops = "-"
        table.add_row(name, spec.backend, params, flops, spec.description)
    console.print(table)


@app.command()
def formats() -> None:
    """List the image formats emseg reads and writes."""
    for line in supported_formats():
        console.print(f"- {line}")


def _register_subcommands() -> None:
    # Analysis commands live in their own modules; each adds its commands here.
    from emseg.cli import (_cmd_benchmark, _cmd_ensemble, _cmd_explain, _cmd_export, _cmd_index, _cmd_objects,
                           _cmd_recipes, _cmd_weights)

    for module in (_cmd_objects, _cmd_index, _cmd_explain, _cmd_benchmark, _cmd_ensemble, _cmd_recipes,
                   _cmd_weights, _cmd_export):
        module.register(app)
    from emseg.cli import _cmd_pretrain  # issue 18: pretrain, propagate

    _cmd_pretrain.register(app)

    from emseg.cli import _cmd_suggest  # issue 20: active learning

    _cmd_suggest.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())

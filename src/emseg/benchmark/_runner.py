"""``emseg benchmark``: train a matrix of models x losses x seeds (or folds), score each run, report.

Every run trains with :func:`emseg.training.train` into
``OUT/runs/<model>__<loss>__seed<s>/`` (``fold<k>`` with ``folds: K``),
predicts the test slices, and is scored with every metric group of
:func:`emseg.evaluation.score_segmentation`. ``OUT/runs/<run>/result.json``
(written atomically, last) marks a finished run: a second invocation skips
it. A run interrupted during training resumes from its ``last.pt`` (its time
budget counts the time already spent); one interrupted before its first
checkpoint, or whose options changed since, starts again. Results go to
``OUT/results.json``, ``OUT/results.csv`` and the HTML report ``OUT/report.html``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from emseg.benchmark._config import (
    RESULT_FILENAME,
    BenchConfig,
    BenchModel,
    EnsembleSpec,
    _hash,
    _load_volume,
    _plan,
    _training_config,
    load_bench_config,
)
from emseg.benchmark._files import _clear_run, _quantise, _read_curve, _read_json, _save_npy, _write_json
from emseg.benchmark._report import write_report
from emseg.ensemble import ValidationSource, build_ensemble
from emseg.evaluation import annotation_agreement, flatten_scores, model_complexity, score_segmentation
from emseg.inference import Predictor
from emseg.io import atomic_output, remove_stale_temporaries, write_csv_rows
from emseg.training import train

logger = logging.getLogger(__name__)

__all__ = ["run_benchmark"]


# ----------------------------------------------------------------------------- running one run


def _check_device(budget: Any) -> str:
    import torch

    has_cuda = torch.cuda.is_available()
    if budget.device == "cuda" and not has_cuda:
        raise ValueError("budget.device is 'cuda' but no CUDA GPU is available; use device: cpu or auto")
    if budget.device == "cpu" and has_cuda:
        raise ValueError("budget.device is 'cpu' but a CUDA GPU is visible and training would use it; "
                         "run with CUDA_VISIBLE_DEVICES= (empty) to benchmark on the CPU, or set device: auto")
    return "cuda" if has_cuda else "cpu"


def _score(bench: BenchConfig, labels: np.ndarray, truth: np.ndarray, probs: np.ndarray | None) -> dict[str, Any]:
    ev = bench.evaluation
    return score_segmentation(labels, truth, classes=bench.classes, metrics=ev.metrics, probabilities=probs,
                              subsets=ev.subsets, ignore_label=bench.ignore_label, background=bench.background,
                              per_slice=ev.per_slice, spacing=ev.spacing, membrane_class=ev.membrane_class)


def _fractions(bench: BenchConfig, labels: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float]]:
    """Volume fraction of each class in the prediction and the truth (counted pixels), and their difference.

    Whole test volume, no cell mask: :func:`emseg.analysis.volume_fractions`
    does per-cell fractions; here one number per class is what a table needs.
    """
    keep = np.ones(truth.shape, bool) if bench.ignore_label is None else truth != bench.ignore_label
    k = len(bench.classes)
    n = max(int(keep.sum()), 1)
    pred_counts = np.bincount(labels[keep].ravel().astype(np.int64), minlength=k)[:k] / n
    true_counts = np.bincount(truth[keep].ravel().astype(np.int64), minlength=k)[:k] / n
    return {c: {"truth": float(true_counts[i]), "predicted": float(pred_counts[i]),
                "difference": float(pred_counts[i] - true_counts[i])} for i, c in enumerate(bench.classes)}


def _annotator_row(bench: BenchConfig, out: Path, test: tuple) -> dict[str, Any]:
    """The second annotation scored against the truth like a model (no probabilities, no training)."""

    source = bench.dataset.test.model_copy(update={"labels": bench.dataset.second_annotation})
    _, raw_second, _ = _load_volume(source)
    agreement = annotation_agreement(test[1], raw_second, classes=bench.classes, ignore_label=bench.ignore_label,
                                     background=bench.background)
    # pixels the second annotator left unlabelled count as background when it is scored like a model
    second = raw_second if bench.ignore_label is None else np.where(raw_second == bench.ignore_label, 0, raw_second)
    scores = _score(bench, second.astype(np.uint8), test[1], None)
    _save_npy(out / "annotator" / "test_labels.npy", second.astype(np.uint8))
    metrics = flatten_scores(scores)
    for name, value in _fractions(bench, second, test[1]).items():
        metrics[f"fraction_difference/{name}"] = value["difference"]
    return {
        "run": "second annotator", "kind": "annotator", "model": "second annotator", "model_name": "annotation",
        "model_options": {}, "loss": "-", "loss_training": {}, "seed": None, "fold": None, "budget_minutes": None,
        "device": None, "parameters": None, "parameters_kind": None, "flops_per_slice": None, "flops_shape": None,
        "train_seconds": None, "over_budget": False, "time_to_best_s": None, "best_epoch": None, "epochs": None,
        "stop_reason": None, "best_val_mean_iou": None, "predict_seconds": None, "test_voxels": int(second.size),
        "mvox_per_s": None, "curve": [], "metrics": metrics, "scores": scores, "config_hash": None,
        "agreement": agreement.to_dict(), "fractions": _fractions(bench, second, test[1]),
        "labels_path": "annotator/test_labels.npy",
    }


def _run_one(bench: BenchConfig, run: dict[str, Any], out: Path, test: tuple, *, progress: bool) -> dict[str, Any]:
    config, raw, budget = _training_config(bench, run)
    run_dir = out / "runs" / run["name"]
    marker = run_dir / RESULT_FILENAME
    digest = _hash(raw)
    remove_stale_temporaries(run_dir)
    if marker.is_file():
        previous = _read_json(marker) or {}  # written atomically; unreadable only if damaged by hand
        if previous.get("config_hash") == digest:
            logger.info("%s: finished earlier, not retrained", run["name"])
            return previous
        logger.warning("%s: its options changed since it ran; training it again", run["name"])
        marker.unlink()
        _clear_run(run_dir)
    device = _check_device(budget)
    stamp = run_dir / "bench_run.json"
    if stamp.is_file() and (_read_json(stamp) or {}).get("config_hash") != digest:
        _clear_run(run_dir)  # other options, or a stamp cut short: nothing here can be trusted
    summary = _read_json(run_dir / "summary.json")
    if summary is not None and (run_dir / "model.pt").is_file():
        logger.info("%s: training had finished; predicting and scoring", run["name"])
    else:
        resume = (run_dir / "last.pt").is_file()
        if not resume:
            _clear_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(stamp, {"config_hash": digest})
        logger.info("%s: %s (budget %.2f min)", run["name"], "resuming training" if resume else "training", budget.minutes)
        train(config, run_dir, resume=resume, overwrite=not resume, progress=progress)
        summary = json.loads((run_dir / "summary.json").read_text())
    over_budget = summary["elapsed_s"] > 1.1 * budget.minutes * 60 + 5
    if over_budget:  # e.g. a random forest: it is fitted in one go, the budget cannot stop it
        logger.warning("%s: training took %.0f s, over its budget of %.1f min", run["name"], summary["elapsed_s"],
                       budget.minutes)
    curve = _read_curve(run_dir)
    best = next((c for c in curve if c["epoch"] == summary["best_epoch"]), None)

    # predicted at the precision it was trained and validated with (training.precision, default auto)
    predictor = Predictor.from_checkpoint(run_dir, precision=config.training.precision)
    raw_test, truth, _ = test
    start = time.perf_counter()
    labels, probs = predictor.predict_volume(raw_test, probabilities=True)
    predict_seconds = time.perf_counter() - start
    complexity = model_complexity(predictor.model, in_channels=predictor.context_slices, shape=raw_test.shape[1:])
    scores = _score(bench, labels, truth, probs)
    _save_npy(run_dir / "test_probabilities.npy", _quantise(probs))
    _save_npy(run_dir / "test_labels.npy", labels)
    model: BenchModel = run["model"]
    fractions = _fractions(bench, labels, truth)
    metrics = flatten_scores(scores)
    for name, value in fractions.items():
        metrics[f"fraction_difference/{name}"] = value["difference"]
    record = {
        "run": run["name"], "kind": "run", "model": model.display, "model_name": model.name,
        "model_options": model.options, "loss": run["loss"].name, "loss_training": run["loss"].training,
        "seed": run["seed"], "fold": run["fold"], "budget_minutes": budget.minutes, "device": device,
        "parameters": complexity["parameters"], "parameters_kind": complexity["parameters_kind"],
        "flops_per_slice": complexity["flops"], "flops_shape": complexity["flops_shape"],
        "train_seconds": summary["elapsed_s"], "over_budget": over_budget,
        "time_to_best_s": None if best is None else best["elapsed_s"],
        "best_epoch": summary["best_epoch"], "epochs": summary["epochs"], "stop_reason": summary["stop_reason"],
        "best_val_mean_iou": summary["best_val_mean_iou"],
        "predict_seconds": round(predict_seconds, 3), "test_voxels": int(labels.size),
        "mvox_per_s": labels.size / 1e6 / predict_seconds if predict_seconds > 0 else None,
        "curve": curve, "metrics": metrics, "scores": scores, "fractions": fractions, "config_hash": digest,
        "labels_path": f"runs/{run['name']}/test_labels.npy",
    }
    _write_json(marker, record)  # last: its presence means the run is finished
    return json.loads(marker.read_text())


# ----------------------------------------------------------------------------- ensembles


def _ensemble_members(spec: EnsembleSpec, runs: list[dict]) -> tuple[list[dict], int | None]:
    """The candidate member runs and ``top`` (for ``topN``), as ``emseg ensemble RUNS --top N`` takes them."""
    if spec.members == "all":
        return runs, None
    if isinstance(spec.members, str):
        return runs, int(spec.members[3:])
    by_name = {r["run"]: r for r in runs}
    missing = [m for m in spec.members if m not in by_name]
    if missing:
        raise ValueError(f"ensembles: members {missing} are not runs of this benchmark; runs: {sorted(by_name)}")
    return [by_name[m] for m in spec.members], None


def _run_ensemble(bench: BenchConfig, spec: EnsembleSpec, records: list[dict], out: Path, test: tuple,
                  plan: list[dict[str, Any]], *, progress: bool) -> dict[str, Any] | None:
    """Build the ensemble with :func:`emseg.ensemble.build_ensemble` (as ``emseg ensemble`` would from the same
    runs: same member selection, weight grid search and combination) into ``OUT/ensembles/<name>/``, then
    predict the test volume with it like any model."""

    candidates, top = _ensemble_members(spec, [r for r in records if r["kind"] == "run"])
    if min(len(candidates), top or len(candidates)) < 2:
        logger.warning("ensemble %s skipped: needs at least two members", spec.method)
        return None
    name = spec.name or f"ensemble-{spec.method}-{spec.members if isinstance(spec.members, str) else len(candidates)}"
    # validation data: the benchmark's dataset.val, else each member's own (as `emseg ensemble` without --val)
    val = None if bench.dataset.val is None else [ValidationSource(s.image, s.labels, s.slices)
                                                   for s in bench.dataset.val]
    try:
        result = build_ensemble([out / "runs" / r["run"] for r in candidates], out / "ensembles" / name,
                                method=spec.method, top=top, val=val, overwrite=True, progress=progress)
    except ValueError as err:
        raise ValueError(f"ensembles: {name}: {err}") from None
    kept = [row for row in result.report["members"] if row.get("kept", True)]
    by_name = {r["run"]: r for r in candidates}
    members = [by_name[row["name"]] for row in kept]
    # predicted at the precision its members were trained and validated with (as each run is)
    first = next(run for run in plan if run["name"] == members[0]["run"])
    predictor = Predictor.from_checkpoint(result.model_path,
                                          precision=_training_config(bench, first)[0].training.precision)
    start = time.perf_counter()
    labels, probs = predictor.predict_volume(test[0], probabilities=True)
    predict_seconds = time.perf_counter() - start
    scores = _score(bench, labels, test[1], probs)
    _save_npy(out / "ensembles" / name / "test_labels.npy", labels)
    fractions = _fractions(bench, labels, test[1])
    metrics = flatten_scores(scores)
    for cls_name, value in fractions.items():
        metrics[f"fraction_difference/{cls_name}"] = value["difference"]
    sum_or_none = lambda key: None if any(r[key] is None for r in members) else sum(r[key] for r in members)  # noqa: E731
    return {
        "run": name, "kind": "ensemble", "model": name, "model_name": "ensemble", "model_options": {},
        "loss": spec.method, "loss_training": {}, "seed": None, "fold": None, "budget_minutes": sum(r["budget_minutes"] for r in members),
        "device": members[0]["device"], "members": [r["run"] for r in members],
        "weights": None if spec.method != "weighted" else [float(row["weight"]) for row in kept],
        "parameters": sum_or_none("parameters"), "parameters_kind": "sum of members",
        "flops_per_slice": sum_or_none("flops_per_slice"), "flops_shape": members[0]["flops_shape"],
        "train_seconds": sum(r["train_seconds"] for r in members), "time_to_best_s": None, "best_epoch": None,
        "epochs": None, "stop_reason": None, "best_val_mean_iou": None,
        "predict_seconds": round(predict_seconds, 3), "test_voxels": int(labels.size),
        "mvox_per_s": labels.size / 1e6 / predict_seconds if predict_seconds > 0 else None,
        "curve": [], "metrics": metrics, "scores": scores, "fractions": fractions, "config_hash": None,
        "labels_path": f"ensembles/{name}/test_labels.npy", "model_path": f"ensembles/{name}/model.pt",
    }


# ----------------------------------------------------------------------------- the whole benchmark

#: Scalar columns of results.csv before the metric columns.
CSV_FIELDS = ("run", "kind", "model", "model_name", "loss", "seed", "fold", "budget_minutes", "device", "parameters",
              "parameters_kind", "flops_per_slice", "train_seconds", "over_budget", "time_to_best_s", "best_epoch", "epochs",
              "stop_reason", "best_val_mean_iou", "predict_seconds", "mvox_per_s")


def _write_results(out: Path, bench: BenchConfig, records: list[dict], source: str, *, report: bool = False,
                   test: tuple | None = None) -> None:
    """``results.csv``, ``report.html`` (with ``report``), then ``results.json``: the last file written, each
    atomically, so a ``results.json`` is only ever there once everything of the benchmark is."""

    payload = {"title": bench.title, "benchmark": source, "classes": bench.classes,
               "background": bench.background, "ignore_label": bench.ignore_label,
               "test": bench.dataset.test.model_dump(mode="json"), "overlays": bench.overlays.model_dump(mode="json"),
               "runs": records}
    _write_csv(out, records)
    with atomic_output(out / "results.json", overwrite=True) as tmp:
        _write_json(tmp, payload)  # the report reads it from its temporary name, next to the runs
        if report:

            write_report(tmp, out / "report.html", test_image=None if test is None else test[0],
                         test_truth=None if test is None else test[1])


def _write_csv(out: Path, records: list[dict]) -> None:
    metric_keys: list[str] = []
    for r in records:
        metric_keys += [k for k in r["metrics"] if k not in metric_keys]
    rows = ([r.get(k) for k in CSV_FIELDS] + [r["metrics"].get(k) for k in metric_keys] for r in records)
    write_csv_rows(out / "results.csv", [*CSV_FIELDS, *metric_keys],
                   (["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row] for row in rows))


def run_benchmark(
    bench_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    only: list[str] | None = None,
    report: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) every run of a benchmark, then write the results and the report.

    Args:
        bench_file: the BENCH.yaml file (see :class:`BenchConfig`).
        out_dir: output folder: ``runs/<run>/``, ``results.json``,
            ``results.csv``, ``report.html``.
        only: run names (or substrings of them) to run; others are skipped
            (their finished results are still reported).
        report: also write ``report.html`` (needs the ``report`` extra: matplotlib).
        progress: progress bars on a terminal.

    Returns:
        The ``results.json`` content: ``{"title", "classes", "runs": [record, ...], ...}``.
    """
    bench = load_bench_config(bench_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    for folder in (out, out / "annotator", *(p for p in (out / "ensembles").glob("*") if p.is_dir())):
        remove_stale_temporaries(folder)
    plan = _plan(bench)
    test = _load_volume(bench.dataset.test)
    records = []
    for run in plan:
        if only and not any(o == run["name"] or o in run["name"] for o in only):
            marker = out / "runs" / run["name"] / RESULT_FILENAME
            if marker.is_file():
                records.append(json.loads(marker.read_text()))
            continue
        records.append(_run_one(bench, run, out, test, progress=progress))
    for spec in bench.ensembles:
        record = _run_ensemble(bench, spec, records, out, test, plan, progress=progress)
        if record is not None:
            records.append(record)
    if bench.dataset.second_annotation is not None:
        records.append(_annotator_row(bench, out, test))
    _write_results(out, bench, records, str(bench_file), report=report, test=test)
    return json.loads((out / "results.json").read_text())

"""emseg benchmark on a tiny matrix: records, CSV/JSON, resume without retraining, config errors."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import write_bench
from emseg.cli import app
from emseg.config import ConfigError
from emseg.benchmark import load_bench_config, run_benchmark

RUNS = ["unet-a__dice-ce__seed0", "unet-b__dice-ce__seed0", "random-forest__none__seed0"]
ENSEMBLES = ["ensemble-mean-all", "ensemble-weighted-top2", "ensemble-vote-all"]


def test_benchmark_records_every_run_and_ensemble(tiny_benchmark):
    _, out, results = tiny_benchmark
    names = [r["run"] for r in results["runs"]]
    assert names == RUNS + ENSEMBLES + ["second annotator"]
    for r in results["runs"][:3]:
        assert (out / "runs" / r["run"] / "result.json").is_file()
        m = r["metrics"]
        for key in ("mean_iou", "mean_iou_foreground", "miou_org", "iou/mitochondrion", "npv/membrane",
                    "auc_roc/membrane", "pr_auc/membrane", "v_rand/membrane", "detected_percent", "mean_aji",
                    "mean_pq", "hd95"):
            assert key in m, key
        assert 0 <= m["mean_iou"] <= 1
        assert r["parameters"] > 0 and r["train_seconds"] > 0 and r["mvox_per_s"] > 0
        assert r["time_to_best_s"] is not None and r["time_to_best_s"] <= r["train_seconds"] + 1
        assert r["curve"] and r["curve"][-1]["val_mean_iou"] is not None
    unet, forest = results["runs"][0], results["runs"][2]
    assert unet["flops_per_slice"] > 0 and unet["epochs"] == 2 and unet["budget_minutes"] == 0.3
    assert forest["flops_per_slice"] is None and forest["parameters_kind"] == "tree nodes"
    weighted = results["runs"][4]
    assert len(weighted["members"]) == 2 and sum(weighted["weights"]) == pytest.approx(1)
    assert results["runs"][3]["members"] == RUNS
    # an ensemble's mean IoU is computed from its own labels, not copied from a member
    assert all(0 <= r["metrics"]["mean_iou"] <= 1 for r in results["runs"][3:])
    # inter-annotator variability next to the models: the second annotation scored against the truth
    import numpy as np
    import tifffile

    from emseg.evaluation import evaluate

    truth = tifffile.imread(bench_dir(out) / "test_labels.tif")
    second = tifffile.imread(bench_dir(out) / "test_labels_b.tif")
    annotator = results["runs"][-1]
    expected = evaluate(second, truth, classes=results["classes"])
    assert annotator["kind"] == "annotator"
    assert annotator["metrics"]["mean_iou"] == pytest.approx(expected.mean_iou)
    assert annotator["agreement"]["mean_iou"] == pytest.approx(expected.mean_iou)  # symmetric
    for r in results["runs"]:
        fractions = r["fractions"]
        assert sum(v["predicted"] for v in fractions.values()) == pytest.approx(1)
        mito = fractions["mitochondrion"]
        assert mito["truth"] == pytest.approx(np.mean(truth == 2))
        assert r["metrics"]["fraction_difference/mitochondrion"] == pytest.approx(mito["predicted"] - mito["truth"])
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["run"] for row in rows] == names
    assert float(rows[0]["mean_iou"]) == pytest.approx(unet["metrics"]["mean_iou"])
    assert json.loads((out / "results.json").read_text())["runs"][1]["run"] == RUNS[1]
    assert (out / "report.html").stat().st_size > 10_000


def bench_dir(out):
    return out.parent


def test_second_invocation_does_not_retrain(tiny_benchmark):
    bench, out, results = tiny_benchmark
    before = {run: ((out / "runs" / run / "model.pt").stat().st_mtime_ns,
                    (out / "runs" / run / "result.json").stat().st_mtime_ns) for run in RUNS}
    again = run_benchmark(bench, out, report=False, progress=False)
    after = {run: ((out / "runs" / run / "model.pt").stat().st_mtime_ns,
                   (out / "runs" / run / "result.json").stat().st_mtime_ns) for run in RUNS}
    assert after == before
    assert [r["metrics"]["mean_iou"] for r in again["runs"][:3]] == [r["metrics"]["mean_iou"] for r in results["runs"][:3]]


def test_half_trained_run_resumes_and_changed_options_retrain(tiny_benchmark, tmp_path):
    bench, out, _ = tiny_benchmark
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    run_dir = copy / "runs" / RUNS[0]
    # as if interrupted after the last epoch's checkpoint, before summary and scoring
    (run_dir / "result.json").unlink()
    (run_dir / "summary.json").unlink()
    log_mtime = (run_dir / "metrics.jsonl").stat().st_mtime_ns
    other = (copy / "runs" / RUNS[1] / "result.json").stat().st_mtime_ns
    run_benchmark(bench, copy, only=["unet"], report=False, progress=False)
    assert (run_dir / "result.json").is_file()
    # resumed from last.pt at epoch 2 of 2: no epoch re-run, so metrics.jsonl was not rewritten
    assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == log_mtime
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert (copy / "runs" / RUNS[1] / "result.json").stat().st_mtime_ns == other
    # a changed option for a run name trains that run again
    changed = bench.read_text().replace("act: prelu, dropout: 0.1", "act: prelu, dropout: 0.2")
    bench2 = bench.parent / "bench_changed.yaml"
    bench2.write_text(changed)
    run_benchmark(bench2, copy, only=["unet-b"], report=False, progress=False)
    assert (copy / "runs" / RUNS[1] / "result.json").stat().st_mtime_ns != other


def test_bench_config_errors(tmp_path, epfl_crop):
    bench = write_bench(tmp_path, epfl_crop, extra="bugdet: {minutes: 1}")
    with pytest.raises(ConfigError, match="bugdet"):
        load_bench_config(bench)
    bench.write_text(bench.read_text().replace("bugdet: {minutes: 1}", "").replace("label: unet-b", "label: unet-a"))
    with pytest.raises(ConfigError, match="distinct 'label'"):
        load_bench_config(bench)
    bench.write_text(bench.read_text().replace("label: unet-a, features: [4, 8], act", "label: unet-b, features: [4, 8], acti"))
    with pytest.raises(ConfigError, match="acti"):  # the model registry rejects the option before any training
        load_bench_config(bench)
    result = CliRunner().invoke(app, ["benchmark", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not found" in result.output


def test_folds_split_training_slices_without_overlap(tmp_path, epfl_crop):
    from emseg.benchmark._config import _fold_sources, _plan, _training_config

    bench_file = write_bench(tmp_path, epfl_crop)
    text = bench_file.read_text()
    text = text.replace("  val: {image: " + str(epfl_crop["raw"]) + ", labels: " + str(epfl_crop["labels"]) + ', slices: "3"}\n', "")
    text = text.replace('slices: "0:3"}', 'slices: "0:4"}').replace("seeds: [0]", "folds: 2\nseeds: [0]")
    bench_file.write_text(text)
    bench = load_bench_config(bench_file)
    names = [run["name"] for run in _plan(bench)]
    assert names[:2] == ["unet-a__dice-ce__fold0", "unet-a__dice-ce__fold1"] and len(names) == 6
    train0, val0 = _fold_sources(bench, 0)
    train1, val1 = _fold_sources(bench, 1)
    assert [s["slices"] for s in train0 + val0] == ["1,3", "0,2"]
    assert [s["slices"] for s in train1 + val1] == ["0,2", "1,3"]
    config, _, _ = _training_config(bench, _plan(bench)[1])
    assert config.data.val[0].slices == "1,3" and config.data.train[0].slices == "0,2"


def test_report_without_matplotlib_names_the_extra(tiny_benchmark, tmp_path, monkeypatch):
    import sys

    from emseg.benchmark import write_report

    _, out, _ = tiny_benchmark
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"emseg\[report\]"):
        write_report(out / "results.json", tmp_path / "r.html")


def test_budget_device_is_checked(monkeypatch):
    import torch

    from emseg.benchmark._config import Budget
    from emseg.benchmark._runner import _check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        _check_device(Budget(minutes=1, device="cpu"))
    assert _check_device(Budget(minutes=1, device="auto")) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        _check_device(Budget(minutes=1, device="cuda"))


def test_cli_benchmark_resumes_and_redraws_report(tiny_benchmark, tmp_path):
    bench, out, _ = tiny_benchmark
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "report.html").unlink()
    result = CliRunner().invoke(app, ["benchmark", str(bench), "--out", str(copy), "--no-report", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "unet-a__dice-ce__seed0" in result.output and not (copy / "report.html").exists()
    result = CliRunner().invoke(app, ["benchmark", str(bench), "--out", str(copy), "--report-only", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (copy / "report.html").stat().st_size > 10_000

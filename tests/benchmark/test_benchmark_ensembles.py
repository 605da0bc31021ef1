"""`emseg benchmark` builds its ensembles with the ensemble package: the same model as `emseg ensemble` from the same runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from conftest import write_bench
from emseg.cli import app
from emseg.evaluation import evaluate
from emseg.inference import Predictor

UNET_A, UNET_B, FOREST = "unet-a__dice-ce__seed0", "unet-b__dice-ce__seed0", "random-forest__none__seed0"
PAIR = f"  - {{method: vote, members: [{UNET_A}, {UNET_B}], name: vote-pair}}"


@pytest.fixture(scope="module")
def bench_pair(tiny_benchmark, tmp_path_factory, epfl_crop):
    """The tiny benchmark's finished runs (not retrained) with a weighted top-2 ensemble and a two-member vote."""
    _, reference, _ = tiny_benchmark
    folder = tmp_path_factory.mktemp("bench_ensembles")
    bench = write_bench(folder, epfl_crop, extra=PAIR)
    text = bench.read_text()
    for dropped in ("  - {method: mean}\n", "  - {method: vote}\n"):
        text = text.replace(dropped, "")
    text = "\n".join(line for line in text.splitlines() if "second_annotation" not in line)
    bench.write_text(text + "\n")
    assert "members: top2" in text and "vote-pair" in text and "{method: mean}" not in text
    out = folder / "out"
    shutil.copytree(reference / "runs", out / "runs")
    result = CliRunner().invoke(app, ["benchmark", str(bench), "--out", str(out), "--no-report", "-q"])
    assert result.exit_code == 0, result.output
    return folder, out, json.loads((out / "results.json").read_text())


def _emseg_ensemble(out, dest, members, options, epfl_crop):
    """`emseg ensemble` of the benchmark's runs, validated on the benchmark's dataset.val (slice 3 of the crop)."""
    args = ["ensemble", *[str(out / "runs" / m) for m in members], "--out", str(dest), *options,
            "--val", str(epfl_crop["raw"]), str(epfl_crop["labels"]), "--val-slices", "3", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return dest / "model.pt"


@pytest.mark.parametrize("name, members, options", [
    ("ensemble-weighted-top2", [UNET_A, UNET_B, FOREST], ["--method", "weighted", "--top", "2"]),
    ("vote-pair", [UNET_A, UNET_B], ["--method", "vote"]),
])
def test_benchmark_ensemble_is_the_emseg_ensemble_model(bench_pair, epfl_crop, tmp_path, name, members, options):
    folder, out, results = bench_pair
    record = next(r for r in results["runs"] if r["run"] == name)
    assert record["kind"] == "ensemble" and record["model_path"] == f"ensembles/{name}/model.pt"
    built = _emseg_ensemble(out, tmp_path / "ens", members, options, epfl_crop)
    ours = torch.load(out / record["model_path"], weights_only=True)
    theirs = torch.load(built, weights_only=True)
    for key in ("method", "weights", "member_names", "classes"):
        assert ours[key] == theirs[key], key
    # the same member selection: the report's kept members (top 2 by validation mean IoU for top2)
    report = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert record["members"] == [row["name"] for row in report["members"] if row.get("kept", True)]
    assert len(record["members"]) == 2
    raw = tifffile.imread(folder / "test_raw.tif")
    truth = tifffile.imread(folder / "test_labels.tif")
    # the benchmark predicts at its runs' training precision (the default, auto); so does this reference
    labels, probs = Predictor.from_checkpoint(built, precision="auto").predict_volume(raw, probabilities=True)
    bench_labels, bench_probs = Predictor.from_checkpoint(out / record["model_path"], precision="auto").predict_volume(
        raw, probabilities=True)
    np.testing.assert_array_equal(bench_probs, probs)
    np.testing.assert_array_equal(bench_labels, labels)
    np.testing.assert_array_equal(np.load(out / record["labels_path"]), labels)
    expected = evaluate(labels, truth, classes=results["classes"])
    assert record["metrics"]["mean_iou"] == pytest.approx(expected.mean_iou)
    if name == "vote-pair":
        # two members: every voxel where they disagree is a tie, broken by the higher mean probability
        a, pa = Predictor.from_checkpoint(out / "runs" / UNET_A, precision="auto").predict_volume(raw, probabilities=True)
        b, pb = Predictor.from_checkpoint(out / "runs" / UNET_B, precision="auto").predict_volume(raw, probabilities=True)
        ties = a != b
        assert ties.sum() > 0
        mean = (pa + pb) / 2
        better = np.where(np.take_along_axis(mean, a[None].astype(np.int64), 0)[0]
                          >= np.take_along_axis(mean, b[None].astype(np.int64), 0)[0], a, b)
        np.testing.assert_array_equal(labels[ties], better[ties])
        # not "ties to the lowest class": some ties went to the higher of the two classes
        assert (labels[ties] > np.minimum(a, b)[ties]).any()

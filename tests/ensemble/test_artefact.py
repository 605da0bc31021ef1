"""The ensemble artefact: one model.pt that loads safely and predicts like a single model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

import emseg
from emseg.cli import app
from emseg.ensemble import EnsemblePredictor, build_ensemble, combine_probabilities, majority_vote
from emseg.inference import Predictor
from emseg.training import CheckpointError, load_checkpoint, save_checkpoint

from conftest import EPFL_CLASSES

runner = CliRunner()


@pytest.fixture(scope="module")
def weighted(seed_runs, tmp_path_factory):
    _, runs = seed_runs
    return build_ensemble([runs.out_dir], tmp_path_factory.mktemp("ens") / "weighted", method="weighted",
                          progress=False)


def test_weighted_report_scores_members_mean_and_chosen_weights(seed_runs, weighted):
    _, runs = seed_runs
    report = json.loads((weighted.out_dir / "ensemble.json").read_text())
    assert report["metric"] == "val_mean_iou" and report["validation"][0]["slices"] == "3"
    assert [m["name"] for m in report["members"]] == ["seed-0", "seed-1"]
    for member in report["members"]:
        # the member's score on the cached validation probabilities == the trainer's own validation score
        summary = json.loads((runs.out_dir / member["name"] / "summary.json").read_text())
        assert member["val_mean_iou"] == pytest.approx(summary["best_val_mean_iou"], abs=1e-6)
    best_member = max(m["val_mean_iou"] for m in report["members"])
    assert report["weighted"]["val_mean_iou"] >= best_member - 1e-12  # single members are grid vertices
    assert report["weighted"]["val_mean_iou"] >= report["mean"]["val_mean_iou"] - 1e-12  # (0.5, 0.5) is on the grid
    assert report["weighted"]["grid_points"] == 11
    assert sum(report["weighted"]["weights"]) == pytest.approx(1.0)
    assert report["mean"]["weights"] == [0.5, 0.5] and "val_iou" in report["vote"]
    ckpt = torch.load(weighted.model_path, map_location="cpu", weights_only=True)
    assert ckpt["backend"] == "ensemble" and ckpt["classes"] == EPFL_CLASSES and ckpt["method"] == "weighted"
    kept = [w for w in report["weighted"]["weights"] if w > 0]
    assert ckpt["weights"] == pytest.approx(kept) and len(ckpt["members"]) == len(kept)
    assert all(m["backend"] == "torch" and "state" in m for m in ckpt["members"])


def test_artefact_round_trip_predicts_the_manual_combination(seed_runs, tmp_path, epfl_crop):
    _, runs = seed_runs
    result = build_ensemble([runs.out_dir / "seed-1", runs.out_dir / "seed-0" / "model.pt"], tmp_path / "ens",
                            method="mean", progress=False)
    assert result.names == ["seed-1", "seed-0"]
    ensemble = Predictor.from_checkpoint(tmp_path / "ens")
    assert isinstance(ensemble, EnsemblePredictor) and isinstance(ensemble, Predictor)
    assert ensemble.classes == EPFL_CLASSES and ensemble.num_classes == 7
    volume = tifffile.imread(epfl_crop["raw"])[1:4, :96, :128]  # small: CPU time
    tifffile.imwrite(tmp_path / "small.tif", volume, photometric="minisblack")
    members = [Predictor.from_checkpoint(runs.out_dir / "seed-1"), Predictor.from_checkpoint(runs.out_dir / "seed-0")]
    expected = (members[0].predict_volume(volume, probabilities=True)[1]
                + members[1].predict_volume(volume, probabilities=True)[1]) / 2
    labels, probs = ensemble.predict_volume(volume, probabilities=True)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_array_equal(labels, expected.argmax(0))
    np.testing.assert_allclose(ensemble.predict_proba_volume(volume), expected, atol=1e-6)
    np.testing.assert_allclose(ensemble.predict_proba_slice(volume[2]), expected[:, 2], atol=1e-6)
    # the public predict() takes the artefact like a single model
    emseg.predict(tmp_path / "ens", tmp_path / "small.tif", tmp_path / "pred.tif", progress=False)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "pred.tif"), labels)


def test_vote_artefact_and_mixed_members(seed_runs, tmp_path, epfl_crop, monkeypatch):
    """A 2-D U-Net, a 2.5-D U-Net (3 context slices) and a random forest: each keeps its own input."""
    from emseg.models import build_model

    monkeypatch.setattr("emseg.ensemble._build.MEMMAP_BYTES", 0)  # exercise the memory-mapped cache

    _, runs = seed_runs
    torch.manual_seed(0)
    net = build_model("unet2d", in_channels=3, num_classes=7, options={"features": [4, 8]})
    save_checkpoint(tmp_path / "ctx3.pt", {
        "backend": "torch", "classes": EPFL_CLASSES,
        "model": {"name": "unet2d", "options": {"features": [4, 8]}, "in_channels": 3, "context_slices": 3},
        "normalization": {"mean": 120.0, "std": 40.0}, "state": net.state_dict(),
    })
    rf_cfg = tmp_path / "rf.yaml"
    rf_cfg.write_text(f"""
data:
  train: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "0:3"}}
  val: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "3"}}
  classes: {EPFL_CLASSES}
model: {{name: random-forest, n_estimators: 4, samples_per_class: 200, sigmas: [1.0]}}
""")
    emseg.train(rf_cfg, tmp_path / "rf", progress=False)
    paths = [runs.out_dir / "seed-0", tmp_path / "ctx3.pt", tmp_path / "rf"]
    result = build_ensemble(paths, tmp_path / "vote", method="vote", progress=False)  # validation of seed-0's config
    assert result.report["validation"][0]["slices"] == "3" and len(result.report["members"]) == 3
    rf_summary = json.loads((tmp_path / "rf" / "summary.json").read_text())
    assert result.report["members"][2]["val_mean_iou"] == pytest.approx(rf_summary["best_val_mean_iou"], abs=1e-6)
    ensemble = Predictor.from_checkpoint(tmp_path / "vote")
    assert ensemble.context_slices == 3 and ensemble.method == "vote"
    volume = tifffile.imread(epfl_crop["raw"])[:3, :96, :128]
    member_probs = [Predictor.from_checkpoint(p).predict_volume(volume, probabilities=True)[1] for p in paths]
    labels, probs = ensemble.predict_volume(volume, probabilities=True)
    vote_labels, fractions = majority_vote(member_probs)
    np.testing.assert_array_equal(labels, vote_labels)
    assert np.abs(probs - fractions).max() <= 1 / 8 + 1e-6  # vote fractions, eps = 1 / (2 (M + 1))
    # the 2.5-D member saw its own 3-slice context: the ensemble's slice API needs a (3, Y, X) stack
    from emseg.data import context_stack

    np.testing.assert_allclose(ensemble.predict_proba_slice(context_stack(volume, 1, 3)), probs[:, 1], atol=1e-6)
    with pytest.raises(ValueError, match="needs 3 context slices"):
        ensemble.predict_proba_slice(volume[1])
    np.testing.assert_allclose(combine_probabilities(member_probs, method="vote"), probs, atol=1e-6)


def test_mismatched_classes_are_refused(seed_runs, tmp_path):
    _, runs = seed_runs
    ckpt = load_checkpoint(runs.out_dir / "seed-1")
    ckpt["classes"] = [*EPFL_CLASSES[:-1], "nucleus"]
    save_checkpoint(tmp_path / "other.pt", ckpt)
    with pytest.raises(ValueError, match="must share class names.*nucleus"):
        build_ensemble([runs.out_dir / "seed-0", tmp_path / "other.pt"], tmp_path / "ens", method="mean",
                       progress=False)
    # a hand-made artefact with a mismatching member is refused at load time
    good = load_checkpoint(runs.out_dir / "seed-0")
    save_checkpoint(tmp_path / "bad.pt", {"backend": "ensemble", "classes": EPFL_CLASSES, "method": "mean",
                                          "weights": [0.5, 0.5], "members": [good, ckpt]})
    with pytest.raises(CheckpointError, match="member 1 has classes"):
        Predictor.from_checkpoint(tmp_path / "bad.pt")
    save_checkpoint(tmp_path / "ok.pt", {"backend": "ensemble", "classes": EPFL_CLASSES, "method": "mean",
                                         "weights": [0.5, 0.5], "members": [good, good]})
    assert isinstance(Predictor.from_checkpoint(tmp_path / "ok.pt"), EnsemblePredictor)
    with pytest.raises(ValueError, match="already an ensemble"):
        build_ensemble([tmp_path / "ok.pt"], tmp_path / "ens2", method="mean", progress=False)


def test_cli_ensemble_predict_evaluate_explain(seed_runs, tmp_path, epfl_crop):
    _, runs = seed_runs
    ens = tmp_path / "ens"
    result = runner.invoke(app, ["ensemble", str(runs.out_dir), "--out", str(ens), "--method", "weighted",
                                 "--step", "0.25", "--top", "2", "--val", str(epfl_crop["raw"]),
                                 str(epfl_crop["labels"]), "--val-slices", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "equal-weight mean:" in result.output and "weighted:" in result.output and "best member" in result.output
    report = json.loads((ens / "ensemble.json").read_text())
    assert report["weighted"]["grid_points"] == 5 and report["top"] == 2
    assert report["validation"] == [{"image": str(epfl_crop["raw"]), "labels": str(epfl_crop["labels"]), "slices": "3"}]
    result = runner.invoke(app, ["predict", str(ens), str(epfl_crop["raw"]), str(tmp_path / "pred.tif"), "--quiet"])
    assert result.exit_code == 0, result.output
    pred = tifffile.imread(tmp_path / "pred.tif")
    assert pred.shape == (4, 192, 256)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "pred.tif"), str(epfl_crop["labels"]), "--model", str(ens),
                                 "--slices", "3", "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["mean_iou"] == pytest.approx(report["weighted"]["val_mean_iou"], abs=1e-6)  # slice 3 = validation
    again = runner.invoke(app, ["ensemble", str(runs.out_dir), "--out", str(ens), "--quiet"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = runner.invoke(app, ["ensemble", str(runs.out_dir), "--out", str(tmp_path / "x"), "--method", "median"])
    assert bad.exit_code == 2 and "mean, weighted, vote" in bad.output
    # explain: an ensemble artefact expands to one Grad-CAM map per member
    result = runner.invoke(app, ["explain", str(ens), str(epfl_crop["raw"]), "--class", "membrane",
                                 "--out", str(tmp_path / "cam"), "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cam" / "gradcam_summary.json").read_text())
    n = len(load_checkpoint(ens)["members"])
    assert len(summary["members"]) == n and summary["members"][0]["model"].endswith("]")


class _FakeMember:
    """A stand-in with the Predictor interface: fixed probabilities, 2-D or volumetric."""

    def __init__(self, probs, *, volumetric=False, context_slices=1):
        self.probs, self.classes, self.context_slices = probs, ["a", "b"], context_slices
        self.spatial_dims = 3 if volumetric else 2
        self.volume_calls, self.slice_calls = 0, 0

    def predict_proba_volume(self, volume):
        self.volume_calls += 1
        return self.probs[:, : volume.shape[0]]

    def predict_proba_slice(self, image):
        self.slice_calls += 1
        expected = (image.shape[-2], image.shape[-1]) if self.context_slices == 1 else (self.context_slices, *image.shape[-2:])
        assert image.shape == expected
        z = int(np.asarray(image).reshape(-1)[0]) if self.context_slices == 1 else int(image[self.context_slices // 2, 0, 0])
        return self.probs[:, z]


def test_volumetric_members_predict_the_whole_volume_once():
    rng = np.random.default_rng(1)
    p3d = rng.dirichlet([1, 1], size=(4, 2, 3)).transpose(3, 0, 1, 2).astype(np.float32)   # (K=2, Z=4, Y=2, X=3)
    p2d = rng.dirichlet([1, 1], size=(4, 2, 3)).transpose(3, 0, 1, 2).astype(np.float32)
    volume = np.repeat(np.arange(4)[:, None, None], 6, axis=1).reshape(4, 2, 3)          # slice z holds the value z
    a, b = _FakeMember(p3d, volumetric=True), _FakeMember(p2d, context_slices=3)
    ensemble = EnsemblePredictor([a, b], method="weighted", weights=[3, 1])
    assert ensemble.member_dims == [3, 2] and ensemble.spatial_dims == 3
    probs = ensemble.predict_proba_volume(volume)
    np.testing.assert_allclose(probs, 0.75 * p3d + 0.25 * p2d, rtol=1e-6)
    assert a.volume_calls == 1 and b.slice_calls == 4 and ensemble.context_slices == 3
    with pytest.raises(ValueError, match="same classes"):
        EnsemblePredictor([a, type("Other", (), {"classes": ["b", "a"]})()])


def test_2d_and_3d_members_in_one_artefact(tmp_path, isbi_crop):
    """A 3-D U-Net (whole-volume sliding window) and a 2-D U-Net on the ISBI crop, through save / load / predict."""
    from emseg.models import build_model

    classes = ["interior", "membrane"]
    paths = []
    for name, dims, extra in (("unet3d-thin", 3, {"inference": {"window_3d": [5, 64, 64]}}), ("unet2d", 2, {})):
        torch.manual_seed(0)
        net = build_model(name, in_channels=1, num_classes=2, options={"features": [4, 8]})
        paths.append(tmp_path / f"{name}.pt")
        save_checkpoint(paths[-1], {
            "backend": "torch", "classes": classes, "normalization": {"mean": 120.0, "std": 40.0},
            "model": {"name": name, "options": {"features": [4, 8]}, "in_channels": 1, "spatial_dims": dims},
            "state": net.state_dict(), **extra,
        })
    volume = tifffile.imread(isbi_crop["raw"])[:6, :64, :64]
    truth = tifffile.imread(isbi_crop["labels"])[:6, :64, :64]
    tifffile.imwrite(tmp_path / "raw.tif", volume, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", truth, photometric="minisblack")
    from emseg.ensemble import ValidationSource

    result = build_ensemble(paths, tmp_path / "ens", method="mean",
                            val=ValidationSource(str(tmp_path / "raw.tif"), str(tmp_path / "lab.tif"), "2:4"),
                            progress=False)
    ckpt = torch.load(result.model_path, map_location="cpu", weights_only=True)
    assert ckpt["model"]["spatial_dims"] == 3 and result.weights == [0.5, 0.5]
    ensemble = Predictor.from_checkpoint(tmp_path / "ens")
    members = [Predictor.from_checkpoint(p) for p in paths]
    assert members[0].spatial_dims == 3 and members[1].spatial_dims == 2
    assert ensemble.member_dims == [3, 2] and ensemble.spatial_dims == 3 and ensemble.window_3d == (5, 64, 64)
    member_probs = {p.stem: m.predict_proba_volume(volume) for p, m in zip(paths, members)}
    expected = sum(w * member_probs[n] for n, w in zip(result.names, result.weights))
    np.testing.assert_allclose(ensemble.predict_proba_volume(volume), expected, atol=1e-5)
    # the report's member scores are those of the members' own volume predictions on slices 2-3
    for row in result.report["members"]:
        scores = emseg.evaluate(member_probs[row["name"]].argmax(0)[2:4].astype(np.uint8), truth[2:4], classes=classes)
        assert row["val_mean_iou"] == pytest.approx(scores.mean_iou, abs=1e-9)

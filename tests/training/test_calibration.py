"""Decision calibration: per-class logit offsets fitted on validation data and applied at prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from emseg.data import IGNORE_INDEX
from emseg.evaluation import EvaluationResult, confusion_matrix
from emseg.training._calibration import fit_logit_offsets, mean_iou_of_confusions


def test_mean_iou_of_confusions_matches_the_evaluation_and_scikit_learn():
    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 5000)
    pred = np.where(rng.random(5000) < 0.7, truth, rng.integers(0, 4, 5000))
    pred[pred == 3] = 2  # class 3 never predicted, still present in the truth
    conf = np.bincount(truth * 5 + pred, minlength=25).reshape(5, 5)  # class 4 absent from both: left out
    ours = float(mean_iou_of_confusions(conf))
    assert ours == pytest.approx(EvaluationResult.from_confusion(conf, classes=list("abcde")).mean_iou)
    assert ours == pytest.approx(jaccard_score(truth, pred, labels=[0, 1, 2, 3], average="macro"))
    batch = mean_iou_of_confusions(np.stack([conf, np.eye(5, dtype=int)]))
    assert batch.shape == (2,) and batch[1] == 1.0


def test_offsets_undo_a_known_bias_and_never_lower_the_validation_score():
    """Scores that favour class 2 by 1.2 (as class weights do): the fitted offset takes it back."""
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, size=(2, 60, 80))
    clean = rng.normal(size=(3, 2, 60, 80)).astype(np.float32) * 1.5
    clean[truth, *np.indices(truth.shape)] += 2.0  # the true class leads by about 2 logits
    biased = clean.copy()
    biased[2] += 1.2
    scores = [biased[:, i] for i in range(2)]
    labels = [truth[i] for i in range(2)]
    cal = fit_logit_offsets(scores, labels, step=0.05)
    assert cal.offsets[0] == 0.0
    assert cal.offsets[2] - cal.offsets[1] == pytest.approx(-1.2, abs=0.3)
    assert cal.after > cal.before + 0.02
    assert cal.before == pytest.approx(_iou_all(scores, labels), abs=1e-9)
    assert cal.after == pytest.approx(_iou_all(scores, labels, cal.offsets), abs=1e-9)
    assert cal.pixels == truth.size
    # unbiased scores: nothing to gain, offsets stay near zero and the score does not drop
    fair = fit_logit_offsets([clean[:, i] for i in range(2)], labels)
    assert fair.after >= fair.before and np.abs(fair.offsets).max() <= 0.3


def _iou_all(scores, labels, offsets=None):
    conf = 0
    for s, t in zip(scores, labels):
        shifted = s if offsets is None else s + np.asarray(offsets, np.float32)[:, None, None]
        conf = conf + confusion_matrix(shifted.argmax(0), t, num_classes=s.shape[0], ignore_label=IGNORE_INDEX)
    return EvaluationResult.from_confusion(conf, classes=[str(k) for k in range(scores[0].shape[0])]).mean_iou


def test_ignored_pixels_do_not_count_and_bad_input_is_refused():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 3, size=(40, 50))
    scores = rng.normal(size=(3, 40, 50)).astype(np.float32)
    scores[truth, *np.indices(truth.shape)] += 1.0
    base = fit_logit_offsets([scores], [truth])
    noisy_truth, noisy_scores = truth.copy(), scores.copy()
    noisy_truth[:10] = IGNORE_INDEX
    noisy_scores[0, :10] += 50.0  # what the ignored pixels would vote for, if they counted
    kept = fit_logit_offsets([noisy_scores], [noisy_truth])
    assert kept.pixels == truth.size - 10 * 50
    assert kept.offsets[0] == 0.0 and np.abs(kept.offsets).max() < 1.0
    with pytest.raises(ValueError, match="do not match"):
        fit_logit_offsets([scores], [truth[:-1]])
    with pytest.raises(ValueError, match="outside 0..2"):
        fit_logit_offsets([scores], [np.full_like(truth, 7)])
    assert base.after >= base.before


def _conv_predictor(offsets=None):
    from emseg.data import Normalizer
    from emseg.inference import Predictor

    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 3, 3, padding=1).eval()
    return Predictor(model, classes=["a", "b", "c"], normalizer=Normalizer(mean=0.0, std=1.0), window=(32, 32),
                     overlap=0.25, device=torch.device("cpu"), logit_offsets=offsets)


def test_the_predictor_adds_the_offsets_to_the_logits_before_softmax_and_argmax():
    image = np.random.default_rng(3).normal(size=(50, 70)).astype(np.float32)
    plain, shifted = _conv_predictor(), _conv_predictor([0.0, 0.8, -0.5])
    p0, p1 = plain.predict_proba_slice(image), shifted.predict_proba_slice(image)
    expected = torch.softmax(torch.log(torch.from_numpy(p0)) + torch.tensor([0.0, 0.8, -0.5])[:, None, None], 0)
    np.testing.assert_allclose(p1, expected.numpy(), atol=1e-5)
    labels = shifted.predict_labels_slice(image)
    np.testing.assert_array_equal(labels, p1.argmax(0))
    assert (labels != plain.predict_labels_slice(image)).mean() > 0.05  # the offsets change decisions
    assert _conv_predictor([0.0, 0.0, 0.0]).logit_offsets is None
    with pytest.raises(ValueError, match="3 finite numbers"):
        _conv_predictor([0.0, 1.0])


def test_training_calibrates_the_best_checkpoint_and_predict_applies_it(tiny_config, epfl_crop, tmp_path, cpu_bf16):
    """The stored offsets reproduce the validation score the calibration reports, through `emseg.predict`."""
    import emseg
    from emseg.inference import Predictor
    from emseg.training import load_checkpoint

    cfg = tmp_path / "cal.yaml"
    cfg.write_text(tiny_config.read_text().replace("patch_size: 64}", "patch_size: 64, calibrate: true}"))
    tiny_run = emseg.train(cfg, tmp_path / "run", progress=False)
    summary = json.loads((tiny_run.run_dir / "summary.json").read_text())
    cal = summary["calibration"]
    ckpt = load_checkpoint(tiny_run.model_path)
    assert ckpt["inference"]["logit_offsets"] == cal["logit_offsets"] == ckpt["training"]["calibration"]["logit_offsets"]
    assert cal["val_mean_iou_after"] >= cal["val_mean_iou_before"]
    assert cal["val_mean_iou_before"] == pytest.approx(summary["best_val_mean_iou"], abs=1e-6)
    # the validation slice (z = 3 of the crop), predicted with and without the offsets
    raw, truth = tifffile.imread(epfl_crop["raw"])[3], tifffile.imread(epfl_crop["labels"])[3]
    tifffile.imwrite(tmp_path / "val.tif", raw)
    for flag, key in ((True, "val_mean_iou_after"), (False, "val_mean_iou_before")):
        out = emseg.predict(tiny_run.run_dir, tmp_path / "val.tif", tmp_path / f"val_{flag}.tif", progress=False,
                            calibrated=flag, overlap=0.25)
        conf = confusion_matrix(tifffile.imread(out), truth, num_classes=7)
        assert float(mean_iou_of_confusions(conf)) == pytest.approx(cal[key], abs=2e-3)
    assert Predictor.from_checkpoint(tiny_run.run_dir, calibrated=False).logit_offsets is None


def test_emseg_calibrate_fits_an_uncalibrated_run(tmp_path, tiny_config):
    """`emseg calibrate RUN` on a run trained without calibration (the default), and its errors."""
    from typer.testing import CliRunner

    import emseg
    from emseg.cli import app
    from emseg.training import load_checkpoint

    run = emseg.train(tiny_config, tmp_path / "run", progress=False)  # training.calibrate: false by default
    assert "logit_offsets" not in load_checkpoint(run.model_path)["inference"]
    assert "calibration" not in json.loads((run.run_dir / "summary.json").read_text())
    result = CliRunner().invoke(app, ["calibrate", str(run.run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "validation mean IoU" in result.output
    summary = json.loads((run.run_dir / "summary.json").read_text())
    cal = summary["calibration"]
    assert load_checkpoint(run.model_path)["inference"]["logit_offsets"] == cal["logit_offsets"]
    assert cal["val_mean_iou_before"] == pytest.approx(summary["best_val_mean_iou"], abs=1e-6)
    assert cal["val_mean_iou_after"] >= cal["val_mean_iou_before"]
    missing = CliRunner().invoke(app, ["calibrate", str(tmp_path / "nowhere"), "--quiet"])
    # rich wraps the message at the terminal width, at a space or inside the path: compare without whitespace
    flat = "".join(missing.output.split())
    assert missing.exit_code != 0 and "nowhere/config.yamldoesnotexist" in flat

"""training.semi_supervised: pseudo-labels and mean teacher on data.unlabelled (real ISBI crops)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from emseg.cli import app
from emseg.config import load_config
from emseg.constants import IGNORE_INDEX
from emseg.data import Normalizer
from emseg.losses import build_loss
from emseg.models import build_model, load_checkpoint
from emseg.training import TrainingInterrupted
from emseg.training._semi import (SemiSupervised, balance_weights, cutmix_boxes, mix, pseudo_labels, ramp_weight,
                                   supervised_term)

I = IGNORE_INDEX


def test_pseudo_labels_keep_real_labels_and_respect_per_class_thresholds():
    # 1 image, 3 classes, 4 pixels: predicted class / confidence 0:0.95, 1:0.75, 2:0.85, 1:0.65
    probs = torch.tensor([[0.95, 0.20, 0.10, 0.30],
                          [0.03, 0.75, 0.05, 0.65],
                          [0.02, 0.05, 0.85, 0.05]]).reshape(1, 3, 1, 4)
    thresholds = torch.tensor([0.9, 0.7, 0.9])
    none = torch.full((1, 1, 4), I)
    assert pseudo_labels(probs, thresholds, none).tolist() == [[[0, 1, I, I]]]  # 0.85 < 0.9 for class 2
    known = torch.tensor([[[2, I, 0, I]]])
    out = pseudo_labels(probs, thresholds, known)
    assert out.tolist() == [[[2, 1, 0, I]]]  # real labels win, even over confident predictions
    assert pseudo_labels(probs, torch.tensor([1.0, 1.0, 1.0]), known).tolist() == [[[2, I, 0, I]]]


def test_balanced_pseudo_labels_weigh_each_class_by_what_its_threshold_dropped():
    # 8 free pixels + 1 real label; teacher argmax: class 0 on 4 (3 kept), class 1 on 4 (1 kept)
    probs = torch.tensor([[0.95, 0.95, 0.95, 0.60, 0.20, 0.30, 0.40, 0.05, 0.5],
                          [0.05, 0.05, 0.05, 0.40, 0.80, 0.70, 0.60, 0.95, 0.5]]).reshape(1, 2, 1, 9)
    known = torch.full((1, 1, 9), I)
    known[0, 0, 8] = 0
    target = pseudo_labels(probs, torch.tensor([0.9, 0.9]), known)
    assert target.tolist() == [[[0, 0, 0, I, I, I, I, 1, 0]]]
    weights = balance_weights(probs, target, known == I)
    # class 0: 4 predicted / 3 kept; class 1: 4 predicted / 1 kept; ignored and real-label pixels: 1
    expected = [4 / 3, 4 / 3, 4 / 3, 1, 1, 1, 1, 4.0, 1]
    torch.testing.assert_close(weights, torch.tensor(expected).reshape(1, 1, 9))
    # so the kept pixels weigh as much per class as all the pixels the teacher gave it
    kept = (target != I) & (known == I)
    assert float(weights[kept & (target == 0)].sum()) == pytest.approx(4.0)
    assert float(weights[kept & (target == 1)].sum()) == pytest.approx(4.0)


def test_balanced_term_on_real_patches_differs_from_the_plain_one(tmp_path, isbi_crop):
    config = load_config(_config(tmp_path, isbi_crop, method="pseudo_label", extra=", balance: true"))
    assert config.training.semi_supervised.balance
    torch.manual_seed(0)
    model = build_model("unet2d", in_channels=1, num_classes=2, options={"features": [4, 8]})
    with torch.no_grad():  # spread the random network's probabilities: some pixels pass the thresholds, some not
        for p in model.head.parameters():
            p.mul_(30.0)
    losses = []
    for balance in (True, False):
        config.training.semi_supervised.balance = balance
        torch.manual_seed(0)
        semi = SemiSupervised(config, model, normalizer=Normalizer(127.0, 50.0), patch_size=(64, 64),
                              device=torch.device("cpu"), dtype=None)
        losses.append(float(semi.loss(model, fraction=1.0).detach()))  # the same patches (same seeded stream)
        shares = semi.metrics()["semi_confident_fraction"]
        semi.close()
        assert 0.0 < shares < 1.0
    assert np.isfinite(losses).all() and losses[0] > losses[1]  # dropped pixels' classes weigh more


def test_supervised_term_weighs_pseudo_labels_with_the_class_weights():
    # 4 pixels, 2 classes: pseudo-labels 0, 1 on two of them, the other two ignored
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0],
                           [0.0, 1.0, 0.0, 3.0]]).reshape(1, 2, 1, 4).requires_grad_(True)
    target = torch.tensor([[[0, 1, I, I]]])
    criterion = build_loss({"ce": 1.0}, num_classes=2, class_weights=[1.0, 3.0])
    ce0, ce1 = np.log(1 + np.exp(-2.0)), np.log(1 + np.exp(-1.0))  # -log softmax of the labelled class
    expected = (1.0 * ce0 + 3.0 * ce1) / (1.0 + 3.0) * (2 / 4)  # weighted mean over the kept, times kept / all
    term = supervised_term(criterion, logits, target)
    assert float(term.detach()) == pytest.approx(expected, rel=1e-6)
    plain = supervised_term(build_loss({"ce": 1.0}, num_classes=2), logits, target)
    assert float(plain.detach()) == pytest.approx((ce0 + ce1) / 2 * (2 / 4), rel=1e-6)  # rarer class 1 weighs less
    # no confident pixel: 0 with a gradient (not the NaN of an empty mean), for CE + Dice alike
    empty = supervised_term(build_loss({"ce": 1.0, "dice": 1.0}, num_classes=2), logits, torch.full((1, 1, 4), I))
    assert float(empty.detach()) == 0.0 and empty.requires_grad
    empty.backward()
    assert torch.all(logits.grad == 0)


def test_supervised_loss_term_on_real_patches(tmp_path, isbi_crop):
    config = load_config(_config(tmp_path, isbi_crop, method="pseudo_label", extra=", loss: supervised"))
    assert config.training.semi_supervised.loss == "supervised"
    torch.manual_seed(0)
    model = build_model("unet2d", in_channels=1, num_classes=2, options={"features": [4, 8]})
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(30.0)
    weighted = build_loss({"ce": 1.0, "dice": 1.0}, num_classes=2, class_weights=[0.5, 1.5])
    losses = []
    for loss, criterion in (("supervised", weighted), ("ce", None)):
        config.training.semi_supervised.loss = loss
        semi = SemiSupervised(config, model, normalizer=Normalizer(127.0, 50.0), patch_size=(64, 64),
                              device=torch.device("cpu"), dtype=None, criterion=criterion)
        value = semi.loss(model, fraction=1.0)  # the same patches (same seeded stream)
        assert value.requires_grad and torch.isfinite(value)
        losses.append(float(value.detach()))
        semi.close()
    assert losses[0] != losses[1]
    config.training.semi_supervised.loss = "supervised"
    with pytest.raises(ValueError, match="weight map"):
        SemiSupervised(config, model, normalizer=Normalizer(127.0, 50.0), patch_size=(64, 64),
                       device=torch.device("cpu"), dtype=None,
                       criterion=build_loss({"weighted_ce": 1.0}, num_classes=2))


def test_supervised_loss_is_for_pseudo_labels_only(tmp_path, isbi_crop):
    cfg = _config(tmp_path, isbi_crop, method="mean_teacher", extra=", loss: supervised")
    result = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "r"), "-q"])
    assert result.exit_code == 2 and "pseudo_label" in result.output and "Traceback" not in result.output


def test_cutmix_boxes_cover_half_the_plane_in_one_box():
    rng = np.random.default_rng(0)
    masks = cutmix_boxes(200, (64, 48), rng)
    assert masks.shape == (200, 64, 48) and masks.dtype == bool
    areas = masks.mean(axis=(1, 2))
    assert np.all(np.abs(areas - 0.5) < 0.05)  # rounding of the box's sides only
    for m in masks[:20]:  # one axis-aligned box: its bounding box is full
        ys, xs = np.nonzero(m)
        assert m[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
    assert len({(int(np.argmax(m.any(1))), int(np.argmax(m.any(0)))) for m in masks}) > 20  # boxes move


def test_mix_pastes_the_next_patch_into_each_box():
    a = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 1, 2, 4)  # 3 images (N, C, Y, X)
    masks = torch.zeros(3, 2, 4, dtype=torch.bool)
    masks[0, :, :2] = True  # image 0 shows image 1 in its left half
    masks[2, 1, 3] = True  # image 2 shows image 0 at one pixel (wraps around)
    out = mix(a, masks)
    assert out[0, 0, :, :2].tolist() == a[1, 0, :, :2].tolist() and out[0, 0, :, 2:].tolist() == a[0, 0, :, 2:].tolist()
    assert torch.equal(out[1], a[1])
    expected = a[2].clone()
    expected[0, 1, 3] = a[0, 0, 1, 3]
    assert torch.equal(out[2], expected)
    labels = torch.tensor([[[0, 1, I, 1], [0, 0, 0, 0]], [[5, 5, 5, 5], [6, 6, 6, 6]], [[I] * 4, [I] * 4]])
    assert mix(labels, masks)[0].tolist() == [[5, 5, I, 1], [6, 6, 0, 0]]  # real labels travel with their pixels
    # a smaller output plane (network output at half resolution): the masks are resized by nearest neighbour
    small = torch.arange(3 * 2, dtype=torch.float32).reshape(3, 1, 2)  # (N, Y, X) = (3, 1, 2)
    # nearest neighbour from 2 x 4 to 1 x 2 keeps row 0, columns 0 and 2: image 0 -> [True, False]
    assert mix(small, masks).tolist() == [[[2.0, 1.0]], [[2.0, 3.0]], [[4.0, 5.0]]]


def test_cutmix_term_on_real_patches(tmp_path, isbi_crop):
    config = load_config(_config(tmp_path, isbi_crop, method="pseudo_label", extra=", cutmix: true"))
    assert config.training.semi_supervised.cutmix
    torch.manual_seed(0)
    model = build_model("unet2d", in_channels=1, num_classes=2, options={"features": [4, 8]})
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(30.0)
    inputs, losses = [], []
    for cutmix in (True, False):
        config.training.semi_supervised.cutmix = cutmix
        semi = SemiSupervised(config, model, normalizer=Normalizer(127.0, 50.0), patch_size=(64, 64),
                              device=torch.device("cpu"), dtype=None)
        # the student's input (hooked after the teacher was copied from it)
        hook = model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
        loss = semi.loss(model, fraction=1.0)
        hook.remove()
        assert loss.requires_grad and torch.isfinite(loss)
        losses.append(float(loss.detach()))
        semi.close()
    mixed, plain = inputs
    assert mixed.shape == plain.shape == (2, 1, 64, 64)
    # the same seeded stream gives the same strong views: each mixed patch is its own view outside one box
    # of about half the patch, and its partner's inside it
    for i in range(2):
        own, other = mixed[i] == plain[i], mixed[i] == plain[1 - i]
        assert bool((own | other).all())
        assert 0.45 < float((own & ~other).float().mean()) < 0.55
    assert losses[0] != losses[1]


def test_cutmix_needs_two_patches_per_step(tmp_path, isbi_crop):
    cfg = _config(tmp_path, isbi_crop, method="pseudo_label", extra=", cutmix: true, batch_size: 1")
    result = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "r"), "-q"])
    assert result.exit_code == 2 and "cutmix" in result.output and "batch_size" in result.output
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_ramp_weight():
    assert ramp_weight(2.0, 0.0, 0.5) == pytest.approx(2.0 * np.exp(-5.0))
    assert ramp_weight(2.0, 0.25, 0.5) == pytest.approx(2.0 * np.exp(-5.0 * 0.25))
    assert ramp_weight(2.0, 0.5, 0.5) == ramp_weight(2.0, 0.9, 0.5) == 2.0
    assert ramp_weight(2.0, 0.0, 0.0) == 2.0


def _config(tmp_path, isbi_crop, *, method: str, extra: str = "", name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(f"""
data:
  train: {{image: {isbi_crop['raw']}, labels: {isbi_crop['labels']}, slices: "0,1"}}
  val: {{image: {isbi_crop['raw']}, labels: {isbi_crop['labels']}, slices: "7"}}
  unlabelled: [{{image: {isbi_crop['raw']}, slices: "0:7"}}]
  classes: [interior, membrane]
model: {{name: unet2d, features: [4, 8]}}
training: {{max_minutes: 2, epochs: 2, iterations_per_epoch: 2, batch_size: 2, patch_size: 64,
           semi_supervised: {{method: {method}, weight: 1.0, threshold: [0.6, 0.7], ramp_up: 0.5{extra}}}}}
""")
    return path


def test_unlabelled_patches_of_labelled_slices_keep_their_labels(tmp_path, isbi_crop):
    """The unlabelled volume holds the labelled sections 0, 1: their pixels keep the real labels; sections
    2-6 get pseudo-labels only where the teacher is confident enough (the rest ignored)."""
    import tifffile

    config = load_config(_config(tmp_path, isbi_crop, method="pseudo_label"))
    labels = tifffile.imread(isbi_crop["labels"])
    model = build_model("unet2d", in_channels=1, num_classes=2, options={"features": [4, 8]})
    semi = SemiSupervised(config, model, normalizer=Normalizer(127.0, 50.0), patch_size=(64, 64),
                          device=torch.device("cpu"), dtype=None)
    assert sorted(semi.known) == [(0, 0), (0, 1)]
    np.testing.assert_array_equal(semi.known[(0, 1)], labels[1])
    patch = semi._known_patch((0, 1, 5, 7), (64, 64))
    np.testing.assert_array_equal(patch, labels[1, 5:69, 7:71])
    assert (semi._known_patch((0, 3, 0, 0), (64, 64)) == I).all()
    loss = semi.loss(model, fraction=1.0)
    assert loss.requires_grad and torch.isfinite(loss)
    logged = semi.metrics()
    assert 0.0 <= logged["semi_confident_fraction"] <= 1.0 and logged["semi_weight"] == 1.0
    semi.close()


@pytest.mark.parametrize("method", ["pseudo_label", "mean_teacher", "pseudo_label, loss: supervised"])
def test_semi_supervised_training_runs_and_resumes(tmp_path, isbi_crop, method, cpu_bf16, monkeypatch):
    import emseg

    cfg = _config(tmp_path, isbi_crop, method=method)
    emseg.train(cfg, tmp_path / "whole", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(r["semi_loss"] is not None and r["semi_loss"] >= 0 for r in lines)
    assert lines[0]["semi_weight"] < lines[1]["semi_weight"] <= 1.0  # ramped up
    # an interrupted run (1 epoch) resumed to 2 epochs gives the same weights as the uninterrupted one
    real, calls = SemiSupervised.loss, {"n": 0}

    def interrupted(self, model, *, fraction):
        calls["n"] += 1
        if calls["n"] == 3:  # the first step of epoch 2
            raise KeyboardInterrupt
        return real(self, model, fraction=fraction)

    monkeypatch.setattr(SemiSupervised, "loss", interrupted)
    with pytest.raises(TrainingInterrupted):
        emseg.train(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(SemiSupervised, "loss", real)
    resumed = emseg.train(load_config(cfg), tmp_path / "cut", resume=True, progress=False)
    last_a = load_checkpoint(tmp_path / "whole" / "last.pt")
    last_b = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert resumed.epochs == 2 and "semi" in last_b and "semi" not in load_checkpoint(resumed.model_path)
    for key, value in last_a["state"].items():
        torch.testing.assert_close(last_b["state"][key], value, rtol=0, atol=0)
    for key, value in last_a["semi"]["teacher"].items():
        torch.testing.assert_close(last_b["semi"]["teacher"][key], value, rtol=0, atol=0)


def test_semi_supervised_without_unlabelled_data_is_refused(tmp_path, isbi_crop):
    cfg = _config(tmp_path, isbi_crop, method="pseudo_label")
    cfg.write_text(cfg.read_text().replace("  unlabelled:", "  #"))
    result = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "r"), "-q"])
    assert result.exit_code == 2 and "data.unlabelled" in result.output and "Traceback" not in result.output
    cfg2 = _config(tmp_path, isbi_crop, method="pseudo_label", name="c2.yaml")
    cfg2.write_text(cfg2.read_text().replace("threshold: [0.6, 0.7]", "threshold: [0.6, 0.7, 0.8]"))
    result = CliRunner().invoke(app, ["train", str(cfg2), "--out", str(tmp_path / "r2"), "-q"])
    assert result.exit_code == 2 and "threshold has 3 values" in result.output

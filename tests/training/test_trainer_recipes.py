"""The trainer with recipe ingredients: weight maps, checkpoint metrics, stop rules, grain filter, heads."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch
from conftest import EPFL_CLASSES, epfl_data_yaml
from torch import nn

import emseg
from emseg.config import load_config
from emseg.data import add_grain_channels
from emseg.inference import Predictor
from emseg.models import MODELS
from emseg.models import ModelOptions, ModelSpec
from emseg.training import load_checkpoint
from emseg.training._inputs import WEIGHT_CACHE
from emseg.training._trainer import _early_stop
from emseg.training._validation import mean_auc

TINY = "max_minutes: 1.0, epochs: 2, iterations_per_epoch: 2, batch_size: 2, patch_size: 32"


def _config(tmp_path, epfl_crop, model: str, training: str, extra: str = ""):
    path = tmp_path / "c.yaml"
    path.write_text(f"""
{epfl_data_yaml(epfl_crop)}model: {model}
training: {{{TINY}, {training}}}
{extra}
""")
    return load_config(path)


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_weight_map_grid_sampling_sgd_and_val_loss_checkpoint(tmp_path, epfl_crop):
    cfg = _config(tmp_path, epfl_crop, "{name: unet2d, features: [4, 8]}",
                  "weight_map: {kind: guay, w0: 1.0, edge_terms: [{source: 1, target: 0}]}, "
                  "patch_sampling: {mode: grid, spacing: 64}, optimizer: sgd, momentum: 0.9, nesterov: true, "
                  "lr_schedule: exponential, lr_decay_rate: 0.5, lr_decay_steps: 1, learning_rate: 0.01, "
                  "checkpoint_metric: val_loss, epochs: 3, "
                  "augment: {rotation: 20, elastic: guay, grid_distortion: 0.2, noise_std: 0.05}")
    run = tmp_path / "run"
    result = emseg.train(cfg, run, progress=False)
    records = _records(run)
    assert len(records) == 3
    for r in records:
        assert {"val_loss", "val_mean_f1", "val_auc", "val_mean_iou"} <= set(r) and r["val_loss"] > 0
        assert 0.0 <= r["val_auc"] <= 1.0
    # exponential decay by 0.5 per step, steps 0..5: the last step (5) used 0.01 * 0.5 ** 5
    assert records[-1]["lr"] == pytest.approx(0.01 * 0.5**5)
    best = min(range(3), key=lambda k: records[k]["val_loss"])
    assert result.best_epoch == best + 1 and result.checkpoint_metric == "val_loss"
    assert result.best_metric == pytest.approx(records[best]["val_loss"])
    assert load_checkpoint(run)["training"]["epoch"] == best + 1
    assert (run / WEIGHT_CACHE).is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["checkpoint_metric"] == "val_loss"


def test_abandon_rule_and_early_stopping_rule(tmp_path, epfl_crop):
    cfg = _config(tmp_path, epfl_crop, "{name: unet2d, features: [4, 8]}",
                  "abandon_below: {epochs: 1, score: 0.99}, epochs: 3, optimizer: radam, warmup_fraction: 0.5, "
                  "lr_schedule: plateau, plateau_patience: 1")
    result = emseg.train(cfg, tmp_path / "run", progress=False)
    assert result.stop_reason == "abandoned" and result.epochs == 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stop_reason"] == "abandoned"
    tc = SimpleNamespace(early_stopping_patience=3, abandon_below=None)
    assert _early_stop(tc, epoch=5, best_epoch=3, val_iou=0.5) is None
    assert _early_stop(tc, epoch=6, best_epoch=3, val_iou=0.5) == "early stopping"
    rule = SimpleNamespace(early_stopping_patience=None, abandon_below=SimpleNamespace(epochs=4, score=0.3))
    assert _early_stop(rule, epoch=4, best_epoch=4, val_iou=0.31) is None
    assert _early_stop(rule, epoch=4, best_epoch=4, val_iou=0.29) == "abandoned"
    assert _early_stop(rule, epoch=5, best_epoch=4, val_iou=0.1) is None  # the rule is checked at epoch N only


def test_grain_filter_channels_round_trip_through_the_checkpoint(tmp_path, epfl_crop, cpu_bf16):
    """Trained and predicted under ``precision: auto`` (fp32, then bf16 as on a CPU with native bf16)."""
    from conftest import auto_dtype

    from emseg._device import autocast

    cfg = _config(tmp_path, epfl_crop, "{name: unet2d, features: [4, 8]}", "epochs: 1",
                  extra="preprocess: {grain_filter: [30, 200]}")
    run = tmp_path / "run"
    emseg.train(cfg, run, progress=False)
    ckpt = load_checkpoint(run)
    assert ckpt["preprocess"] == {"grain_filter": [30, 200]} and ckpt["model"]["in_channels"] == 3
    predictor = Predictor.from_checkpoint(run, calibrated=False)  # compared with the bare network below
    assert predictor.grain_filter == [30, 200] and predictor.dtype == auto_dtype(cpu_bf16)
    image = tifffile.imread(epfl_crop["raw"])[3, :64, :64]
    probs = predictor.predict_proba_slice(image)
    # by hand: image + two grain-filtered copies, normalised, through the network (same autocast: one
    # 64 x 64 window, so the same kernels run and the two agree to fp32 rounding in either precision)
    x = torch.from_numpy(predictor.normalizer(add_grain_channels(image, [30, 200])))[None]
    with torch.no_grad(), autocast(predictor.device, predictor.dtype):
        expected = torch.softmax(predictor.model(x).float(), 1)[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    without = torch.from_numpy(predictor.normalizer(np.stack([image] * 3)))[None]  # filter channels matter
    with torch.no_grad(), autocast(predictor.device, predictor.dtype):
        assert not np.allclose(torch.softmax(predictor.model(without).float(), 1)[0].numpy(), probs, atol=1e-3)
    out = tmp_path / "pred.tif"
    emseg.predict(run, str(epfl_crop["raw"]), str(out), progress=False)
    assert tifffile.imread(out).shape == (4, 192, 256)


class _TwoHeads(nn.Module):
    """Tiny stand-in for the hybrid network: {"main", "aux2d"} in training mode, named parameter groups."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.trunk = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.main = nn.Conv2d(4, num_classes, 1)
        self.aux = nn.Conv2d(4, num_classes, 1)

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return {"main": self.main(h), "aux2d": self.aux(h)} if self.training else self.main(h)

    def param_groups(self):
        return {"trunk": list(self.trunk.parameters()), "heads": [*self.main.parameters(), *self.aux.parameters()]}


def test_multi_head_model_with_group_weight_decay(tmp_path, epfl_crop, monkeypatch):
    spec = ModelSpec("two-heads-test", "test only", ModelOptions, lambda i, k, _opts: _TwoHeads(i, k))
    monkeypatch.setitem(MODELS._entries, "two-heads-test", spec)
    cfg = _config(tmp_path, epfl_crop, "{name: two-heads-test}",
                  "weight_decay_groups: {heads: 0.01}, aux_loss_weights: {aux2d: 0.5}")
    result = emseg.train(cfg, tmp_path / "run", progress=False)
    assert result.epochs == 2 and all(np.isfinite(r["train_loss"]) for r in _records(tmp_path / "run"))
    bad = _config(tmp_path, epfl_crop, "{name: two-heads-test}", "weight_decay_groups: {head: 0.01}")
    with pytest.raises(ValueError, match="Did you mean 'heads'.*trunk, heads"):
        emseg.train(bad, tmp_path / "run2", progress=False)


def test_mean_auc_matches_sklearn_macro_ovr():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300) + np.eye(3)[truth] * 0.3
    probs /= probs.sum(1, keepdims=True)
    assert mean_auc(probs, truth) == pytest.approx(roc_auc_score(truth, probs, multi_class="ovr", average="macro"))
    # a class absent from the truth is left out
    assert mean_auc(probs, np.where(truth == 2, 0, truth)) == pytest.approx(
        np.mean([roc_auc_score(np.where(truth == 2, 0, truth) == k, probs[:, k]) for k in (0, 1)]))


def test_resume_keeps_the_plateau_history_and_weight_map_cache(tmp_path, epfl_crop):
    cfg = _config(tmp_path, epfl_crop, "{name: unet2d, features: [4, 8]}",
                  "weight_map: {kind: unet_border, w0: 5, sigma: 3, foreground: [2]}, lr_schedule: plateau, "
                  "plateau_patience: 1, plateau_factor: 0.5, learning_rate: 0.01, checkpoint_metric: val_mean_f1")
    run = tmp_path / "run"
    emseg.train(cfg, run, progress=False)
    cache = (run / WEIGHT_CACHE).stat().st_mtime_ns
    first = load_checkpoint(run / "last.pt")["training"]
    assert len(first["history"]) == 2 and first["checkpoint_metric"] == "val_mean_f1"
    cfg.training.epochs = 4
    emseg.train(cfg, run, resume=True, progress=False)
    records = _records(run)
    last = load_checkpoint(run / "last.pt")["training"]
    assert len(records) == 4 and len(last["history"]) == 4 and last["history"][:2] == first["history"]
    assert (run / WEIGHT_CACHE).stat().st_mtime_ns == cache  # reused, not recomputed
    # the rate of epoch k follows the plateau rule on the F1 history of the epochs before it
    from emseg.training._schedules import plateau_scale

    for k in (2, 3):
        scale = plateau_scale(last["history"][:k], factor=0.5, patience=1)
        assert records[k]["lr"] == pytest.approx(0.01 * scale)


def test_weight_average_hand_worked():
    import doctest

    from emseg.training import _ema
    from emseg.training._ema import WeightAverage

    assert doctest.testmod(_ema).failed == 0
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    net[0].weight.data.fill_(0.0)
    ema = WeightAverage(net, decay=0.5)
    for value, step_decay, expected in ((1.0, 0.1, 0.9), (2.0, 2 / 11, 1.8), (3.0, 0.25, 2.7), (4.0, 4 / 13, 3.6)):
        assert ema.current_decay() == pytest.approx(step_decay)
        net[0].weight.data.fill_(value)
        net[1].num_batches_tracked.fill_(int(value))
        ema.update(net)
        # 0.1*0 + 0.9*1; 2/11*0.9 + 9/11*2; 0.25*1.8 + 0.75*3; 4/13*2.7 + 9/13*4 (warm-up still below 0.5)
        assert ema.model[0].weight.item() == pytest.approx(expected)
        assert ema.model[1].num_batches_tracked.item() == int(value)  # integer buffers are copied
    assert not ema.model[0].weight.requires_grad and not ema.model.training
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(net, decay=1.0)


def test_ema_trains_the_same_weights_and_saves_their_average(tmp_path, epfl_crop):
    # a fixed training route: the timing probe may pick channels-last in one run and not in the other
    plain = _config(tmp_path, epfl_crop, "{name: unet2d, features: [4, 8]}", "learning_rate: 0.01, route: fp32")
    emseg.train(plain, tmp_path / "plain", progress=False)
    cfg = _config(tmp_path, epfl_crop, "{name: unet2d, features: [4, 8]}",
                  "learning_rate: 0.01, ema_decay: 0.9, route: fp32")
    run = tmp_path / "ema"
    emseg.train(cfg, run, progress=False)
    raw, last = load_checkpoint(tmp_path / "plain" / "last.pt"), load_checkpoint(run / "last.pt")
    assert last["ema"] == {"updates": 4, "decay": 0.9}
    # the average does not change what the optimiser does: the raw weights equal a run without it
    assert last["train_state"].keys() == raw["state"].keys()
    assert all(torch.equal(last["train_state"][k], raw["state"][k]) for k in raw["state"])
    # ... and the saved model is the average, not the raw weights
    floats = [k for k, v in last["state"].items() if v.is_floating_point()]
    assert any(not torch.equal(last["state"][k], last["train_state"][k]) for k in floats)
    assert "train_state" not in load_checkpoint(run / "model.pt")
    # validation scored the average: model.pt reproduces the best epoch's recorded validation IoU
    best = load_checkpoint(run / "model.pt")
    record = _records(run)[best["training"]["best_epoch"] - 1]
    image, truth = tifffile.imread(epfl_crop["raw"])[3], tifffile.imread(epfl_crop["labels"])[3]
    pred = Predictor.from_checkpoint(run / "model.pt").predict_proba_slice(image).argmax(0)
    result = emseg.evaluate(pred, truth, classes=EPFL_CLASSES)
    assert result.mean_iou == pytest.approx(record["val_mean_iou"], abs=1e-6)
    # resume goes on from the raw weights and the stored average
    cfg.training.epochs = 4
    emseg.train(cfg, run, resume=True, progress=False)
    assert load_checkpoint(run / "last.pt")["ema"]["updates"] == 8
    cfg.training.ema_decay, cfg.training.epochs = None, 5
    with pytest.raises(ValueError, match="trained with training.ema_decay"):
        emseg.train(cfg, run, resume=True, progress=False)

"""model.init / `emseg train --init`: start a network from the matching tensors of a checkpoint."""

from __future__ import annotations

import logging

import pytest
import torch
from typer.testing import CliRunner

from emseg.cli import app
from emseg.models import (
    CheckpointError,
    build_model,
    class_dependent_keys,
    initialise_network,
    load_checkpoint,
    save_pretrained_checkpoint,
)

HEAD = {"head.conv.weight", "head.conv.bias"}
FIRST = "encoders.0.0.conv.weight"  # the first convolution of unet2d


def _isbi_config(tmp_path, isbi_crop, *, init: str | None, features=(4, 8), lr: float = 1e-3, seed: int = 0):
    path = tmp_path / f"isbi-{seed}-{init is not None}-{features[0]}.yaml"
    init_line = f", init: {init}" if init else ""
    path.write_text(f"""
data:
  train: {{image: {isbi_crop['raw']}, labels: {isbi_crop['labels']}, slices: "0:2"}}
  val: {{image: {isbi_crop['raw']}, labels: {isbi_crop['labels']}, slices: "2"}}
  classes: [interior, membrane]
model: {{name: unet2d, features: {list(features)}{init_line}}}
training: {{max_minutes: 0.5, epochs: 1, iterations_per_epoch: 1, batch_size: 2, patch_size: 64,
           learning_rate: {lr}, seed: {seed}}}
""")
    return path


def test_init_loads_matching_tensors_and_leaves_head_random(tiny_run):
    """A 7-class EPFL run into a 2-class network: all but the head copied; the head keeps its random values."""
    ckpt = load_checkpoint(tiny_run.run_dir)
    torch.manual_seed(0)
    net = build_model("unet2d", in_channels=1, num_classes=2, options={"features": [4, 8]})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = initialise_network(net, tiny_run.run_dir, name="unet2d", options={"features": [4, 8]},
                                in_channels=1, num_classes=2)
    after = net.state_dict()
    assert set(report.random) == HEAD == class_dependent_keys("unet2d", options={"features": [4, 8]},
                                                              in_channels=1, num_classes=2)
    assert set(report.loaded) == set(after) - HEAD
    for key in report.loaded:
        assert torch.equal(after[key], ckpt["state"][key]), key
    changed = [k for k in report.loaded if k.endswith("weight") and not torch.equal(before[k], after[k])]
    assert len(changed) >= 4  # the start really differs from the random initialisation
    for key in HEAD:
        assert torch.equal(after[key], before[key])
    assert "left random: head.conv.weight, head.conv.bias" in report.describe()


def test_init_skips_pretext_heads_of_a_pretraining_checkpoint(tmp_path, tiny_run):
    """Tensors a pretraining checkpoint marks as pretext heads (``exclude``) are never transferred."""
    state = load_checkpoint(tiny_run.run_dir)["state"]
    path = tmp_path / "pretrained.pt"
    save_pretrained_checkpoint(path, {"model": {"name": "unet2d", "options": {"features": [4, 8]}, "in_channels": 1},
                                      "state": state, "method": "mim", "exclude": [FIRST]})
    net = build_model("unet2d", in_channels=1, num_classes=7, options={"features": [4, 8]})
    report = initialise_network(net, tmp_path, name="unet2d", options={"features": [4, 8]}, in_channels=1,
                                num_classes=7)
    assert report.random == [FIRST]  # same 7 classes: the head is loaded, the excluded tensor is not
    assert "head.conv.weight" in report.loaded and FIRST in report.unused


def test_train_with_init_starts_from_the_checkpoint(tmp_path, isbi_crop, tiny_run, cpu_bf16, caplog):
    """Trained for one step at a negligible learning rate, the run's weights are the start's, bar the head,
    which is the random head of a run without model.init (same seed)."""
    import emseg

    start = load_checkpoint(tiny_run.run_dir)["state"]
    with caplog.at_level(logging.INFO, logger="emseg"):
        with_init = emseg.train(_isbi_config(tmp_path, isbi_crop, init=str(tiny_run.run_dir), lr=1e-9),
                                tmp_path / "init", progress=False)
    assert "left random: head.conv.weight, head.conv.bias" in caplog.text
    scratch = emseg.train(_isbi_config(tmp_path, isbi_crop, init=None, lr=1e-9), tmp_path / "scratch", progress=False)
    got = load_checkpoint(with_init.run_dir)["state"]
    random = load_checkpoint(scratch.run_dir)["state"]
    params = [k for k, v in got.items() if v.is_floating_point() and "running" not in k]
    for key in params:
        if key in HEAD:
            torch.testing.assert_close(got[key], random[key], atol=1e-6, rtol=0)
        else:
            torch.testing.assert_close(got[key], start[key], atol=1e-6, rtol=0)
            assert not torch.allclose(got[key], random[key], atol=1e-4), key
    assert load_checkpoint(with_init.run_dir)["training"]["config"]["model"]["init"] == str(tiny_run.run_dir)


def test_init_refuses_another_architecture(tmp_path, isbi_crop, tiny_run):
    cfg = _isbi_config(tmp_path, isbi_crop, init=None, features=(8, 16))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(cfg), "--out", str(out), "--init", str(tiny_run.run_dir), "-q"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "another architecture" in result.output and "features': [4, 8]" in result.output
    assert "features': [8, 16]" in result.output
    assert not out.exists()  # refused before the run directory was written


def test_init_refuses_a_checkpoint_with_nothing_in_common(tmp_path, tiny_run):
    path = tmp_path / "other.pt"
    save_pretrained_checkpoint(path, {"model": {"name": "x", "options": {}, "in_channels": 1},
                                      "state": {"encoder.w": torch.zeros(3)}, "method": "mim"})
    net = build_model("unet2d", in_channels=1, num_classes=2, options={"features": [4, 8]})
    with pytest.raises(CheckpointError, match="no tensor of the checkpoint matches"):
        initialise_network(net, path, name="unet2d", options={"features": [4, 8]}, in_channels=1, num_classes=2)


def test_init_refuses_other_input_channels(tmp_path, tiny_run):
    net = build_model("unet2d", in_channels=3, num_classes=7, options={"features": [4, 8]})
    with pytest.raises(CheckpointError, match="3 input channel"):
        initialise_network(net, tiny_run.run_dir, name="unet2d", options={"features": [4, 8]}, in_channels=3,
                           num_classes=7)


def test_init_with_seed_ensemble(tmp_path, isbi_crop, tiny_run):
    """`--seeds` trains every member from the same start."""
    cfg = _isbi_config(tmp_path, isbi_crop, init=None, lr=1e-9)
    out = tmp_path / "ens"
    result = CliRunner().invoke(app, ["train", str(cfg), "--out", str(out), "--seeds", "0,1", "--init",
                                      str(tiny_run.run_dir), "-q"])
    assert result.exit_code == 0, result.output
    start = load_checkpoint(tiny_run.run_dir)["state"]
    members = [load_checkpoint(out / f"seed-{s}")["state"] for s in (0, 1)]
    for state in members:
        torch.testing.assert_close(state[FIRST], start[FIRST], atol=1e-6, rtol=0)
    assert not torch.equal(members[0]["head.conv.weight"], members[1]["head.conv.weight"])  # random per seed


def test_missing_init_file_is_a_config_error(tmp_path, isbi_crop):
    cfg = _isbi_config(tmp_path, isbi_crop, init="nowhere/model.pt")
    result = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "r"), "-q"])
    assert result.exit_code == 2
    assert "model.init" in result.output and "not found" in result.output
    assert "Traceback" not in result.output

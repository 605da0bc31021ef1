"""`emseg pretrain` on real ISBI crops: output, resume, start for training, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from emseg.cli import app
from emseg.data import UnlabelledVolumes
from emseg.models import build_model, class_dependent_keys, initialise_network, load_init_checkpoint
from emseg.pretraining import load_pretrain_config, pretrain


def _config(tmp_path, isbi_crop, *, method: str, epochs: int = 3, name: str = "p.yaml"):
    path = tmp_path / name
    path.write_text(f"""
data:
  unlabelled:
    - {{image: {isbi_crop['raw']}, slices: "0:5"}}
    - {{image: {isbi_crop['raw']}, slices: "6:8"}}
model: {{name: unet2d, features: [4, 8]}}
pretraining: {{method: {method}, max_minutes: 5, epochs: {epochs}, iterations_per_epoch: 2, batch_size: 2,
              patch_size: 64, moco_queue: 16, moco_dim: 16, seed: 3}}
""")
    return path


@pytest.mark.parametrize("method", ["mim", "moco"])
def test_interrupted_pretraining_resumes_as_if_never_stopped(tmp_path, isbi_crop, method, cpu_bf16, monkeypatch):
    cfg = _config(tmp_path, isbi_crop, method=method)
    whole = pretrain(cfg, tmp_path / "whole", progress=False)
    assert whole.epochs == 3 and whole.iterations == 6

    real, calls = UnlabelledVolumes.sample, {"n": 0}

    def interrupted(self, n, rng):
        calls["n"] += 1
        if calls["n"] == 1 + 5:  # normaliser fit + 4 steps of epochs 1-2, then the 1st step of epoch 3
            raise KeyboardInterrupt
        return real(self, n, rng)

    monkeypatch.setattr(UnlabelledVolumes, "sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(UnlabelledVolumes, "sample", real)
    assert load_init_checkpoint(tmp_path / "cut" / "last.pt")["pretraining"]["epoch"] == 2
    assert not (tmp_path / "cut" / "summary.json").exists()  # not finished
    resumed = pretrain(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed.epochs == 3 and resumed.iterations == 6
    a, b = (load_init_checkpoint(tmp_path / d) for d in ("whole", "cut"))
    for key, value in a["state"].items():
        torch.testing.assert_close(b["state"][key], value, rtol=0, atol=0)
    lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert lines[-1]["loss"] == pytest.approx(resumed.final_loss)
    assert a["exclude"] == b["exclude"]


def test_pretrained_checkpoint_records_data_and_starts_training(tmp_path, isbi_crop):
    result = pretrain(_config(tmp_path, isbi_crop, method="mim", epochs=1), tmp_path / "mim", progress=False)
    ckpt = load_init_checkpoint(result.out_dir)
    assert ckpt["method"] == "mim" and ckpt["model"]["name"] == "unet2d"
    assert [d["slices"] for d in ckpt["data"]["unlabelled"]] == ["0:5", "6:8"]
    assert [d["positions"] for d in ckpt["data"]["unlabelled"]] == [5, 2]
    assert ckpt["pretraining"]["patches_seen"] == 4
    assert 0 < ckpt["normalization"]["std"] and 0 < ckpt["normalization"]["mean"] < 255
    head = class_dependent_keys("unet2d", options={"features": [4, 8]}, in_channels=1, num_classes=1)
    assert set(ckpt["exclude"]) == head  # the temporary intensity head is never transferred
    net = build_model("unet2d", in_channels=1, num_classes=2, options={"features": [4, 8]})
    report = initialise_network(net, result.out_dir, name="unet2d", options={"features": [4, 8]}, in_channels=1,
                                num_classes=2)
    assert set(report.random) == {"head.conv.weight", "head.conv.bias"}
    assert torch.equal(net.state_dict()["decoders.0.0.conv.weight"], ckpt["state"]["decoders.0.0.conv.weight"])


def test_moco_transfers_only_the_encoder(tmp_path, isbi_crop):
    result = pretrain(_config(tmp_path, isbi_crop, method="moco", epochs=1), tmp_path / "moco", progress=False)
    net = build_model("unet2d", in_channels=1, num_classes=2, options={"features": [4, 8]})
    report = initialise_network(net, result.out_dir, name="unet2d", options={"features": [4, 8]}, in_channels=1,
                                num_classes=2)
    assert report.loaded and all(k.startswith("encoders.") for k in report.loaded)
    assert any(k.startswith("decoders.") for k in report.random)


def test_3d_and_context_networks_pretrain(tmp_path, isbi_crop):
    for name, _kind in (("unet3d-thin", "3-D"), ("unet2d", "2.5-D")):
        cfg = load_pretrain_config(_config(tmp_path, isbi_crop, method="mim", epochs=1, name=f"{name}.yaml"),
                                   overrides={"model": {"name": name, "context_slices": 1 if name != "unet2d" else 3},
                                              "pretraining": {"patch_size": [2, 32, 32] if "3d" in name else 32}})
        if "3d" in name:
            cfg.model.__pydantic_extra__.pop("features")
        result = pretrain(cfg, tmp_path / name, progress=False)
        ckpt = load_init_checkpoint(result.out_dir)
        assert ckpt["model"]["in_channels"] == (3 if name == "unet2d" else 1)
        assert result.final_loss > 0


def test_cli_pretrain_and_bad_inputs(tmp_path, isbi_crop):
    cfg = _config(tmp_path, isbi_crop, method="mim", epochs=1)
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["pretrain", str(cfg), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert (out / "pretrained.pt").is_file() and "emseg train CONFIG --init" in result.output
    again = CliRunner().invoke(app, ["pretrain", str(cfg), "--out", str(out), "-q"])
    assert again.exit_code == 2 and "not empty" in again.output and "--resume" in again.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace('slices: "6:8"', 'slices: "6:9"'))
    result = CliRunner().invoke(app, ["pretrain", str(bad), "--out", str(tmp_path / "b"), "-q"])
    assert result.exit_code == 2 and "data.unlabelled[1].slices" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()
    bad.write_text(cfg.read_text().replace("patch_size: 64", "patch_size: 128"))
    result = CliRunner().invoke(app, ["pretrain", str(bad), "--out", str(tmp_path / "c"), "-q"])
    assert result.exit_code == 2 and "smaller than the patch" in result.output
    bad.write_text(cfg.read_text().replace("method: mim", "method: simclr"))
    result = CliRunner().invoke(app, ["pretrain", str(bad), "--out", str(tmp_path / "d"), "-q"])
    assert result.exit_code == 2 and "pretraining.method" in result.output and "'mim'" in result.output

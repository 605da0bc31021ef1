"""`emseg export` refuses bad requests with a clear message, no traceback and no output file."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from emseg.cli import app
from emseg.training import load_checkpoint, save_checkpoint

from export_kinds import epfl_stack, epfl_test_crop, kind_checkpoints  # noqa: F401

runner = CliRunner()


def _refused(args, out, *words):
    result = runner.invoke(app, ["export", *map(str, args), "--out", str(out)])
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    text = " ".join(result.output.split())
    for word in words:
        assert word in text, text
    assert not out.exists() and not list(out.parent.glob(f".{out.stem}*"))  # nothing left that looks complete
    return text


def test_unknown_format_refused(tiny_run, tmp_path):
    _refused([tiny_run.model_path, "--format", "keras"], tmp_path / "m.onnx", "--format 'keras'",
             "onnx, torchscript, bioimageio")


def test_wrong_suffix_refused(tiny_run, tmp_path):
    _refused([tiny_run.model_path, "--format", "onnx"], tmp_path / "m.zip", "onnx export is written to a .onnx")


def test_window_the_network_cannot_take_refused(tiny_run, tmp_path):
    _refused([tiny_run.model_path, "--format", "onnx", "--window", "101", "--window", "101"], tmp_path / "m.onnx",
             "--window 101 101", "cannot take this window", "multiples of")


def test_window_of_the_wrong_rank_refused(tiny_run, tmp_path):
    _refused([tiny_run.model_path, "--format", "onnx", "--window", "128"], tmp_path / "m.onnx",
             "a 2-D model takes 2 positive sizes")


def test_valid_padding_window_refused_with_nearest_sizes(kind_checkpoints, tmp_path):
    _refused([kind_checkpoints["unet-original"], "--format", "torchscript", "--window", "101", "--window", "101"],
             tmp_path / "m.pt", "valid-padding network 'unet-original' cannot take this window", "nearest sizes")


def test_good_window_is_stored(tiny_run, tmp_path):
    from emseg.export import read_metadata

    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", str(tiny_run.model_path), "--format", "onnx", "--window", "128",
                                 "--window", "192", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_metadata(out)["window"] == [128, 192]


def test_random_forest_not_exportable(tiny_run, tmp_path):
    ckpt = load_checkpoint(tiny_run.model_path)
    ckpt.update(backend="random-forest", model={**ckpt["model"], "name": "random-forest", "options": {}}, state={})
    for key in ("format", "format_version"):
        ckpt.pop(key)
    save_checkpoint(tmp_path / "rf.pt", ckpt)
    _refused([tmp_path / "rf.pt", "--format", "onnx"], tmp_path / "rf.onnx", "not exportable to onnx")


def test_checkpoint_from_newer_emseg_refused(tiny_run, tmp_path):
    data = torch.load(tiny_run.model_path, weights_only=True)
    data["format_version"] = 99
    torch.save(data, tmp_path / "new.pt")
    _refused([tmp_path / "new.pt", "--format", "torchscript"], tmp_path / "m.pt", "format version 99", "upgrade emseg")


def test_existing_output_kept_without_overwrite(tiny_run, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_text("mine")
    result = runner.invoke(app, ["export", str(tiny_run.model_path), "--format", "onnx", "--out", str(out)])
    assert result.exit_code != 0 and "--overwrite" in result.output and out.read_text() == "mine"


def test_predict_refuses_a_foreign_onnx_file(tmp_path, epfl_test_crop):
    import emseg

    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    torch.onnx.export(net, (torch.zeros(1, 1, 16, 16),), str(tmp_path / "foreign.onnx"), dynamo=False,
                      input_names=["input"], output_names=["output"])
    result = runner.invoke(app, ["predict", str(tmp_path / "foreign.onnx"), str(epfl_test_crop),
                                 str(tmp_path / "l.tif")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "no emseg metadata" in " ".join(result.output.split())
    assert not (tmp_path / "l.tif").exists()
    del emseg


def test_missing_extra_is_named(monkeypatch, tiny_run, tmp_path):
    import builtins

    real = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError("No module named 'onnx'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    import importlib

    monkeypatch.setattr(importlib, "import_module", lambda n, *a: no_onnx(n) if n == "onnx" else real(n))
    _refused([tiny_run.model_path, "--format", "onnx"], tmp_path / "m.onnx", "emseg[export]")


def test_evaluate_takes_classes_from_an_exported_model(tiny_run, tmp_path, epfl_test_crop):
    import numpy as np
    import tifffile

    from emseg.export import export_model

    out = export_model(tiny_run.model_path, tmp_path / "m.onnx", format="onnx")["path"]
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, :4] = 2
    tifffile.imwrite(tmp_path / "p.tif", labels)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "p.tif"), "--model", str(out)])
    assert result.exit_code == 0, result.output
    assert "mitochondrion" in result.output

"""ONNX and TorchScript exports of every kind of registry network (and an ensemble) agree with torch on a
real EPFL crop, and `emseg predict` from an exported .onnx equals `emseg predict` from model.pt."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import tifffile
import torch

import emseg
from emseg.export import export_model, load_exported, read_metadata
from emseg.export._export import label_mismatches
from emseg.export._network import build_export_network
from emseg.inference import Predictor
from emseg.training import load_checkpoint

from conftest import EPFL
from export_kinds import KINDS, epfl_stack, epfl_test_crop, kind_checkpoints, labels_vary  # noqa: F401


FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


def _model_path(kind, kind_checkpoints, tiny_run):
    return tiny_run.model_path if kind == "unet2d" else kind_checkpoints[kind]


def _real_input(meta, epfl_stack):
    """Normalised ``(1, C, ...)`` input of a real EPFL crop of a size different from the export's check tiles."""
    raw = tifffile.imread(epfl_stack).astype(np.float32)
    x = (raw - np.float32(meta["normalization"]["mean"])) / np.float32(meta["normalization"]["std"])
    if meta["spatial_dims"] == 3:
        return torch.from_numpy(x[None, None])
    if meta["margin"]:
        x = x[:, :, :64]  # a valid size of the tiny valid-padding U-Net is 60 + 4k; crop to one
        from emseg.models import skeleton

        size = skeleton(meta["models"][0], 7).valid_input_size(56)
        x = x[:, :size, :size]
    c = meta["context_slices"]
    return torch.from_numpy(np.ascontiguousarray(x[:c]))[None]


def _run_exported(path, fmt, x):
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        return torch.jit.load(str(path), map_location="cpu")(x).numpy()


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("kind", ["unet2d", *KINDS])
def test_export_agrees_with_torch_on_a_real_crop(kind, fmt, kind_checkpoints, tiny_run, epfl_stack, tmp_path):
    model = _model_path(kind, kind_checkpoints, tiny_run)
    out = tmp_path / f"model{FORMATS[fmt]}"
    result = export_model(model, out, format=fmt)
    assert out.is_file() and result["max_prob_diff"] <= 1e-4
    meta = read_metadata(out) if fmt == "onnx" else _torchscript_meta(out)
    ckpt = load_checkpoint(model)
    assert meta["classes"] == ckpt["classes"] and meta["normalization"] == pytest.approx(ckpt["normalization"])
    assert meta["context_slices"] == KINDS.get(kind, ("", {}, 1))[2]
    x = _real_input(meta, epfl_stack)
    with torch.no_grad():
        ref = torch.softmax(build_export_network(ckpt)(x), 1).numpy()
    got = torch.softmax(torch.from_numpy(_run_exported(out, fmt, x)), 1).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4
    differ, ties = label_mismatches(ref, got)
    assert differ == ties and ties <= 0.001 * ref[:, 0].size  # only genuine near-ties may round the other way
    assert labels_vary(ref.argmax(1))  # the comparison is not between two constant label maps


def _torchscript_meta(path):
    from emseg.export._formats import read_torchscript_metadata

    return read_torchscript_metadata(path)


@pytest.mark.parametrize("kind", ["unet2d", *KINDS])
def test_predict_from_onnx_equals_predict_from_model_pt(kind, kind_checkpoints, tiny_run, epfl_test_crop,
                                                        epfl_stack, tmp_path):
    model = _model_path(kind, kind_checkpoints, tiny_run)
    exported = export_model(model, tmp_path / "model.onnx", format="onnx")["path"]
    image = epfl_stack if KINDS.get(kind, ("", {}, 1))[2] > 1 or kind == "unet3d" else epfl_test_crop
    a = emseg.predict(model, image, tmp_path / "a.tif", probabilities=tmp_path / "pa.tif", precision="fp32",
                      progress=False)
    b = emseg.predict(exported, image, tmp_path / "b.tif", probabilities=tmp_path / "pb.tif", precision="fp32",
                      progress=False)
    la, lb = tifffile.imread(a), tifffile.imread(b)
    pa, pb = tifffile.imread(tmp_path / "pa.tif"), tifffile.imread(tmp_path / "pb.tif")
    assert np.abs(pa - pb).max() <= 1e-4
    assert np.array_equal(la, lb) and labels_vary(la)


def test_blockwise_zarr_from_onnx_equals_model_pt(tiny_run, tmp_path, one_torch_thread):
    import zarr

    raw = tifffile.imread(EPFL / "test_raw.tif")[:3, 200:392, 200:456]
    volume = tmp_path / "raw.zarr"
    zarr.create_array(store=str(volume), shape=raw.shape, chunks=(1, 96, 128), dtype=raw.dtype)[...] = raw
    exported = export_model(tiny_run.model_path, tmp_path / "model.onnx", format="onnx")["path"]
    a = emseg.predict(tiny_run.model_path, volume, tmp_path / "a.zarr", precision="fp32", block=(1, 96, 128),
                      window=(128, 128), progress=False)
    b = emseg.predict(exported, volume, tmp_path / "b.zarr", precision="fp32", block=(1, 96, 128),
                      window=(128, 128), progress=False)
    la, lb = np.asarray(zarr.open_array(str(a))[...]), np.asarray(zarr.open_array(str(b))[...])
    assert la.shape == raw.shape and np.array_equal(la, lb) and labels_vary(la)
    # and equal to in-memory prediction from the same .onnx
    labels, _ = load_exported(exported, precision="fp32", window=(128, 128), overlap="auto").predict_volume(raw)
    assert np.array_equal(labels, lb)


def test_two_member_ensemble_exports_as_one_network(kind_checkpoints, tiny_run, tmp_path, epfl_stack):
    """A weighted ensemble of a 2-D U-Net (trained) and a 2.5-D U-Net (3 context slices, its own normalisation)."""
    from emseg.training import save_checkpoint

    members = [load_checkpoint(tiny_run.model_path), load_checkpoint(kind_checkpoints["unet2d-2.5d"])]
    assert members[0]["normalization"] != members[1]["normalization"]
    path = tmp_path / "ens.pt"
    save_checkpoint(path, {"backend": "ensemble", "classes": members[0]["classes"], "method": "weighted",
                           "weights": [0.3, 0.7], "members": members, "member_names": ["a", "b"]})
    out = export_model(path, tmp_path / "ens.onnx", format="onnx")["path"]
    meta = read_metadata(out)
    assert meta["kind"] == "ensemble" and len(meta["models"]) == 2 and meta["context_slices"] == 3
    ts = export_model(path, tmp_path / "ens_ts.pt", format="torchscript")["path"]
    # the crop fits one window: the ensemble's per-member blending and the exported network's are the same
    reference = Predictor.from_checkpoint(path, precision="fp32")
    raw = tifffile.imread(epfl_stack)
    ref_labels, ref_probs = reference.predict_volume(raw, probabilities=True)
    got_labels, got_probs = load_exported(out, precision="fp32").predict_volume(raw, probabilities=True)
    assert np.abs(ref_probs - got_probs).max() <= 1e-4
    assert np.array_equal(ref_labels, got_labels) and labels_vary(ref_labels)
    x = torch.from_numpy(((raw[:3].astype(np.float32) - meta["normalization"]["mean"]) /
                          meta["normalization"]["std"]).astype(np.float32))[None]
    with torch.no_grad():
        ts_probs = torch.softmax(torch.jit.load(str(ts))(x), 1)[0].numpy()
    assert np.abs(ts_probs - ref_probs[:, 1]).max() <= 1e-4  # slice 1 with its neighbours 0 and 2

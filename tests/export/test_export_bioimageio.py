"""bioimage.io packages of every exported kind (2-D U-Net, encoder U-Net, 2.5-D, 3-D, valid-padding U-Net and a
2-member ensemble) pass bioimageio.spec validation and bioimageio.core's model test, rebuild from their
state-dict weights through the packaged architecture source, and `emseg predict` from the .zip equals
`emseg predict` from model.pt (in memory, and blockwise on a zarr volume)."""

from __future__ import annotations

import importlib.util
import zipfile

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

import emseg
from emseg.cli import app
from emseg.export import export_model, read_metadata
from emseg.export._export import DEFAULT_SAMPLE, _sample_tile
from emseg.training import load_checkpoint, save_checkpoint

from conftest import EPFL
from export_kinds import KINDS, epfl_stack, epfl_test_crop, kind_checkpoints, labels_vary  # noqa: F401

BIO_KINDS = ["unet2d", "encoder-unet", "unet2d-2.5d", "unet3d", "unet-original", "ensemble"]


@pytest.fixture(scope="module")
def model_paths(kind_checkpoints, tiny_run, tmp_path_factory):
    """model.pt of each kind; the ensemble weights a trained 2-D U-Net and a 2.5-D U-Net (own normalisation)."""
    folder = tmp_path_factory.mktemp("bio_models")
    members = [load_checkpoint(tiny_run.model_path), load_checkpoint(kind_checkpoints["unet2d-2.5d"])]
    assert members[0]["normalization"] != members[1]["normalization"]
    ensemble = folder / "ensemble.pt"
    save_checkpoint(ensemble, {"backend": "ensemble", "classes": members[0]["classes"], "method": "weighted",
                               "weights": [0.3, 0.7], "members": members, "member_names": ["a", "b"]})
    return {"unet2d": tiny_run.model_path, "ensemble": ensemble, **kind_checkpoints}


@pytest.fixture(scope="module")
def packages(model_paths, tmp_path_factory):
    """Each kind exported once (lazily) through `emseg export --format bioimageio`."""
    folder = tmp_path_factory.mktemp("bio_packages")
    done: dict[str, object] = {}

    def get(kind):
        if kind not in done:
            out = folder / f"{kind}.zip"
            name = f"emseg test {kind.replace('.', '_')}"  # bioimage.io names take no '.'
            result = CliRunner().invoke(app, ["export", str(model_paths[kind]), "--format", "bioimageio", "--out",
                                              str(out), "--name", name, "--author", "A. Tester"])
            assert result.exit_code == 0, result.output
            assert "bioimage.io validation and model test passed" in " ".join(result.output.split())
            done[kind] = out
        return done[kind]

    return get


@pytest.mark.parametrize("kind", BIO_KINDS)
def test_package_validates_and_its_test_tensors_reproduce(kind, packages, model_paths):
    from bioimageio.core import test_model
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr, SpaceOutputAxis, SpaceOutputAxisWithHalo

    package = packages(kind)
    descr = load_description(package)
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
    assert descr.validation_summary.status in ("passed", "valid-format")
    # independent of the test export_model ran before keeping the zip
    summary = test_model(package, weight_format="torchscript")
    assert summary.status == "passed", summary.format()

    ckpt = load_checkpoint(model_paths[kind])
    first = ckpt["members"][0] if kind == "ensemble" else ckpt
    assert descr.name == f"emseg test {kind.replace('.', '_')}" and [a.name for a in descr.authors] == ["A. Tester"]
    assert descr.license == "BSD-3-Clause" and descr.description
    assert any("U-Net" in c.text for c in descr.cite) and all(c.doi for c in descr.cite)
    assert {"electron-microscopy", "semantic-segmentation"} <= set(descr.tags)
    assert ("3d" if kind == "unet3d" else "2d") in descr.tags
    assert len(descr.covers) == 1 and descr.documentation is not None
    (inp,), (out,) = descr.inputs, descr.outputs
    norm = [p for p in inp.preprocessing if p.id == "fixed_zero_mean_unit_variance"]
    assert len(norm) == 1 and norm[0].kwargs.mean == pytest.approx(first["normalization"]["mean"])
    assert norm[0].kwargs.std == pytest.approx(first["normalization"]["std"])
    assert [p.id for p in out.postprocessing if p.id != "ensure_dtype"] == ["softmax"]
    channel = next(a for a in out.axes if a.type == "channel")
    assert list(map(str, channel.channel_names)) == ckpt["classes"]
    assert all(c in out.description for c in ckpt["classes"])
    space_in = [a for a in inp.axes if a.type == "space"]
    space_out = [a for a in out.axes if a.type == "space"]
    assert [str(a.id) for a in space_in] == (["z", "y", "x"] if kind == "unet3d" else ["y", "x"])
    meta = read_metadata(package)
    if kind == "unet-original":  # valid padding: the output is the input less the margin the network crops
        from emseg.models import skeleton

        skel = skeleton(meta["models"][0], len(meta["classes"]))
        assert meta["margin"] > 0
        for a in space_in:  # every size the package allows is one the network takes
            assert all(skel.valid_input_size(a.size.min + n * a.size.step) == a.size.min + n * a.size.step
                       for n in range(4))
        assert all(isinstance(a, SpaceOutputAxis) and a.size.offset == -2 * meta["margin"] for a in space_out)
    else:  # in-plane steps of what the network divides by; a halo from the measured receptive field
        assert all(a.size.step % meta["divisor"] == 0 for a in space_in[-2:])
        halos = [a.halo for a in space_out[-2:]]
        assert all(isinstance(a, SpaceOutputAxisWithHalo) for a in space_out[-2:]) and min(halos) >= 1
        assert all(s.size.min > 2 * h for s, h in zip(space_in[-2:], halos))
        assert all(h % meta["divisor"] == 0 for h in halos)  # padding by the halo keeps the pooling grid
    weights = descr.weights
    assert weights.torchscript is not None and weights.pytorch_state_dict is not None
    assert weights.pytorch_state_dict.architecture.callable == "EmsegNetwork"

    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        readme = archive.read("README.md").decode()
        test_input = np.load(archive.open("test_input.npy"))
    assert {"rdf.yaml", "cover.png", "weights_torchscript.pt", "weights_state_dict.pt", "emseg_architecture.py",
            "test_input.npy", "test_output.npy", "sample_input.tif", "sample_output.tif"} <= names
    assert "How it was trained" in readme and first["model"]["name"] in readme
    validation = readme[readme.index("## Validation"):]
    if kind == "unet2d":  # a trained run: its config and validation score are in the README
        score = load_checkpoint(model_paths[kind])["training"]["val_mean_iou"]
        assert "data:" in readme and f"val mean iou {score}" in validation
    if kind == "ensemble":
        assert "member 0" in validation and "member 1" in validation
    # the test input is a real EM crop: the middle of emseg's embedded EPFL test image
    crop = test_input[0] if meta["spatial_dims"] == 2 else test_input[0, 0]  # (C, y, x) / (z, y, x)
    assert np.array_equal(crop, _sample_tile(meta, DEFAULT_SAMPLE, crop.shape[-meta["spatial_dims"]:]))


@pytest.mark.parametrize("kind", ["unet2d", "ensemble", "unet3d"])
def test_state_dict_weights_rebuild_through_the_architecture_source(kind, packages, tmp_path):
    """The pytorch_state_dict entry (no emseg metadata read): architecture file + kwargs + weights_only load."""
    import yaml

    with zipfile.ZipFile(packages(kind)) as archive:
        archive.extractall(tmp_path)
    rdf = yaml.safe_load((tmp_path / "rdf.yaml").read_text())
    entry = rdf["weights"]["pytorch_state_dict"]
    spec = importlib.util.spec_from_file_location("emseg_architecture", tmp_path / entry["architecture"]["source"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = getattr(module, entry["architecture"]["callable"])(**entry["architecture"]["kwargs"])
    state = torch.load(tmp_path / entry["source"], map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    pre = rdf["inputs"][0]["preprocessing"]
    kwargs = next(p["kwargs"] for p in pre if p["id"] == "fixed_zero_mean_unit_variance")
    raw = np.load(tmp_path / rdf["inputs"][0]["test_tensor"]["source"]).astype(np.float32)
    expected = np.load(tmp_path / rdf["outputs"][0]["test_tensor"]["source"])
    with torch.no_grad():
        got = torch.softmax(net(torch.from_numpy((raw - kwargs["mean"]) / kwargs["std"])), 1).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    assert labels_vary(expected.argmax(1))


@pytest.mark.parametrize("kind", BIO_KINDS)
def test_predict_from_zip_equals_predict_from_model_pt(kind, packages, model_paths, epfl_test_crop, epfl_stack,
                                                      tmp_path):
    model = model_paths[kind]
    image = epfl_stack if kind in ("unet2d-2.5d", "unet3d", "ensemble") else epfl_test_crop
    a = emseg.predict(model, image, tmp_path / "a.tif", probabilities=tmp_path / "pa.tif", precision="fp32",
                      progress=False)
    b = emseg.predict(packages(kind), image, tmp_path / "b.tif", probabilities=tmp_path / "pb.tif",
                      precision="fp32", progress=False)
    la, lb = tifffile.imread(a), tifffile.imread(b)
    pa, pb = tifffile.imread(tmp_path / "pa.tif"), tifffile.imread(tmp_path / "pb.tif")
    assert pa.shape == pb.shape and np.abs(pa - pb).max() <= 1e-4
    assert np.array_equal(la, lb) and labels_vary(la)


def test_blockwise_zarr_from_zip_equals_model_pt(packages, model_paths, tmp_path, one_torch_thread):
    import zarr

    raw = tifffile.imread(EPFL / "test_raw.tif")[:3, 200:392, 200:456]
    volume = tmp_path / "raw.zarr"
    zarr.create_array(store=str(volume), shape=raw.shape, chunks=(1, 96, 128), dtype=raw.dtype)[...] = raw
    a = emseg.predict(model_paths["unet2d"], volume, tmp_path / "a.zarr", precision="fp32", block=(1, 96, 128),
                      window=(128, 128), progress=False)
    b = emseg.predict(packages("unet2d"), volume, tmp_path / "b.zarr", precision="fp32", block=(1, 96, 128),
                      window=(128, 128), progress=False)
    la, lb = np.asarray(zarr.open_array(str(a))[...]), np.asarray(zarr.open_array(str(b))[...])
    assert la.shape == raw.shape and np.array_equal(la, lb) and labels_vary(la)


def test_incompatible_pydantic_refused_with_the_fix(tiny_run, tmp_path, monkeypatch):
    import pydantic

    monkeypatch.setattr(pydantic, "VERSION", "2.14.0")
    out = tmp_path / "m.zip"
    result = CliRunner().invoke(app, ["export", str(tiny_run.model_path), "--format", "bioimageio", "--out", str(out)])
    text = " ".join(result.output.split())
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert "pydantic 2.14.0" in text and 'pip install "pydantic<2.14"' in text
    assert not out.exists() and not list(tmp_path.glob(".m*"))


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--name", "emseg 2.5d", ["--name 'emseg 2.5d' contains '.'", "pass another --name"]),
    ("--name", "abc", ["--name 'abc' has 3 characters", "5 to 128"]),
    ("--author", "lab/person", ["--author 'lab/person'", "without '/'"]),
])
def test_name_or_author_bioimageio_rejects_refused(option, value, words, tiny_run, tmp_path):
    out = tmp_path / "m.zip"
    result = CliRunner().invoke(app, ["export", str(tiny_run.model_path), "--format", "bioimageio", "--out", str(out),
                                      option, value])
    text = " ".join(result.output.split())
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert all(w in text for w in words), text
    assert not out.exists() and not list(tmp_path.glob(".m*"))


@pytest.mark.parametrize("kind", ["unet2d", "unet2d-2.5d", "ensemble", "unet3d"])
def test_bioimageio_pipeline_padding_by_the_halo_keeps_the_interior(kind, packages):
    """bioimage.io readers (bioimageio.core's prediction pipeline, as ilastik and deepImageJ do) pad the input by
    the output halo and crop it again: beyond the halo from the edge this equals the package's test output."""
    from bioimageio.core import create_prediction_pipeline, load_description
    from bioimageio.core.digest_spec import get_test_input_sample

    package = packages(kind)
    descr = load_description(package)
    halo = next(a.halo for a in descr.outputs[0].axes if a.type == "space" and hasattr(a, "halo"))
    radius = read_metadata(package)["receptive_radius"]  # measured for 2-D networks
    assert radius is None or halo >= radius  # not capped: the interior is exact
    pipeline = create_prediction_pipeline(descr, weight_format="torchscript")
    got = pipeline.predict_sample_without_blocking(get_test_input_sample(descr)).members["probabilities"].data.values
    with zipfile.ZipFile(package) as archive:
        expected = np.load(archive.open("test_output.npy"))
    assert got.shape == expected.shape
    inner = (..., slice(halo, -halo), slice(halo, -halo))
    assert np.abs(got[inner] - expected[inner]).max() <= 1e-4
    assert labels_vary(expected[inner].argmax(1))


def test_evaluate_takes_classes_from_a_bioimageio_zip(packages, tmp_path):
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, :4] = 2
    tifffile.imwrite(tmp_path / "p.tif", labels)
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "p.tif"), "--model",
                                      str(packages("unet2d"))])
    assert result.exit_code == 0, result.output
    assert "mitochondrion" in result.output

"""Blockwise (out-of-core, resumable, Dask) prediction equals in-memory prediction, seams included."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import sigkill_when

import emseg
from emseg.inference import Predictor, ResumeError, predict_blockwise
from emseg.inference._blockwise import (
    BlockLayout,
    finished_blocks,
    read_run_metadata,
)
from emseg.inference._tiling import axis_windows, input_box, window_batches
from emseg.io import downsample_mode, read_image, write_image

EPFL_RAW = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "epfl-multiclass" / "train_raw.tif"
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(autouse=True)
def _engine_threads(one_torch_thread):
    """Every test here compares with the engine, which uses one torch thread."""


def epfl_zarr_stack(out: Path, depth: int, chunk_depth: int) -> dict:
    """The first ``depth`` slices of a 150 x 200 EPFL crop as zarr (chunks of ``chunk_depth`` slices) in ``out``,
    and a tiny random unet2d (7 classes, 64-px window) beside it."""
    raw = tifffile.imread(EPFL_RAW)[:depth, 300:450, 200:400]
    write_image(out / "raw.zarr", raw, chunks=(chunk_depth, 150, 200))
    return {"raw": raw, "path": out / "raw.zarr", "model": _checkpoint(out / "m.pt")}


def _checkpoint(path: Path, *, context: int = 1, features=(4, 8), window=(64, 64), seed: int = 0) -> Path:
    """A randomly initialised unet2d saved as an emseg checkpoint (fast; the engine does not care about accuracy)."""
    from emseg.models import build_model
    from emseg.models import save_checkpoint

    torch.manual_seed(seed)
    net = build_model("unet2d", in_channels=context, num_classes=7, options={"features": list(features)})
    for m in net.modules():  # non-trivial batch-norm statistics, so the network is not near-constant
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    net.eval()
    with torch.no_grad():  # centre each class's logit on real EM so that several classes win somewhere
        sample = torch.from_numpy((tifffile.imread(EPFL_RAW)[:context, :128, :128].astype(np.float32) - 110) / 35)
        feats = {}
        hook = net.head.register_forward_hook(lambda mod, inp, out: feats.setdefault("f", inp[0]))
        net(sample[None])
        hook.remove()
        mean = feats["f"].mean(dim=(0, 2, 3))
        net.head.conv.bias.copy_(-(net.head.conv.weight[:, :, 0, 0] @ mean))
        net.head.conv.weight.mul_(5.0)
        net.head.conv.bias.mul_(5.0)
    save_checkpoint(path, {
        "backend": "torch",
        "model": {"name": "unet2d", "options": {"features": list(features)}, "in_channels": context,
                  "context_slices": context, "spatial_dims": 2},
        "classes": [f"c{i}" for i in range(7)],
        "normalization": {"mean": 110.0, "std": 35.0},
        "state": net.state_dict(),
        "inference": {"window": list(window), "overlap": 0.25, "divisor": 4},
    })
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 6 x 150 x 200 crop of the EPFL volume as TIFF, HDF5, zarr v2 and v3, and two tiny models."""
    out = tmp_path_factory.mktemp("blockwise")
    raw = tifffile.imread(EPFL_RAW)[:6, 300:450, 200:400]
    tifffile.imwrite(out / "raw.tif", raw, photometric="minisblack")
    write_image(out / "raw.h5:em/raw", raw, chunks=(2, 64, 64))
    write_image(out / "raw2.zarr", raw, chunks=(3, 50, 50), zarr_format=2)
    write_image(out / "raw3.zarr", raw, chunks=(3, 50, 50), zarr_format=3)
    _write_n5_raw(out / "raw.n5", "em", raw, (4, 64, 64))
    return {"dir": out, "raw": raw, "model": _checkpoint(out / "m2d.pt"),
            "model25": _checkpoint(out / "m25d.pt", context=3, seed=1)}


def _write_n5_raw(root: Path, dataset: str, array: np.ndarray, block: tuple[int, int, int]) -> None:
    """Minimal N5 writer (uncompressed blocks), per the N5 spec; tests/io/test_n5.py covers the format itself."""
    import struct

    (root / dataset).mkdir(parents=True)
    (root / "attributes.json").write_text(json.dumps({"n5": "2.5.1"}))
    (root / dataset / "attributes.json").write_text(json.dumps({
        "dimensions": list(array.shape[::-1]), "blockSize": list(block[::-1]), "dataType": str(array.dtype),
        "compression": {"type": "raw"}}))
    for index in np.ndindex(*(-(-s // b) for s, b in zip(array.shape, block))):
        part = array[tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, block))]
        path = root / dataset / "/".join(str(i) for i in index[::-1])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(struct.pack(">HH3I", 0, 3, *part.shape[::-1]) + part.astype(">" + part.dtype.str[1:]).tobytes())


def _in_memory(model: Path, raw: np.ndarray) -> np.ndarray:
    labels, _ = Predictor.from_checkpoint(model, overlap="auto").predict_volume(raw)
    return labels


def test_window_grid_is_global_and_hand_worked():
    # size 200, window 64, overlap 0.25 -> stride 48: starts 0, 48, 96, 144 -> last flush with the end (136)
    assert axis_windows(200, 64, 0.25) == [0, 48, 96, 136]
    assert axis_windows(50, 64, 0.25) == [0]
    # batches of 2 windows, row-major over the 4 x 4 grid: output [100, 120) x [0, 10) needs the windows
    # (48, 0) and (96, 0), in batches [(48, 0), (48, 48)] and [(96, 0), (96, 48)] -> input [48, 160) x [0, 112)
    assert input_box((200, 200), (64, 64), 0.25, 2, (slice(100, 120), slice(0, 10))) == (slice(48, 160), slice(0, 112))
    assert window_batches((200, 50), (64, 64), 0.25, 3) == [[(0, -7), (48, -7), (96, -7)], [(136, -7)]]


@pytest.mark.parametrize("case", [
    # (model, input, block): z-only blocks of whole slices, in-plane blocks crossing many window seams,
    # 2.5-D (3 context slices) with z halo, each from a different input format.
    ("model", "raw.tif", (2, 150, 200)),
    ("model", "raw.h5:em/raw", (4, 40, 70)),
    ("model25", "raw3.zarr", (2, 150, 200)),
    ("model25", "raw2.zarr", (1, 64, 90)),
    ("model", "raw.n5/em", (3, 75, 100)),
])
def test_blockwise_equals_in_memory(data, tmp_path, case, cpu_bf16):
    model_key, source, block = case
    model = data[model_key]
    expected = _in_memory(model, data["raw"])
    assert len(np.unique(expected)) > 1  # a non-trivial segmentation
    # in memory through the public API (TIFF output) ...
    emseg.predict(model, data["dir"] / source, tmp_path / "ref.tif", progress=False)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "ref.tif"), expected)
    # ... and block by block (zarr output): identical, seams included
    out = emseg.predict(model, str(data["dir"] / source), tmp_path / "out.zarr", block=block, progress=False)
    import zarr

    arr = zarr.open_array(str(out), mode="r")
    assert arr.chunks == block and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr[...], expected)


def test_volume_only_predictor_plugs_in_through_its_halo(data, tmp_path):
    """A predictor with only predict_proba_volume + halo (as 3-D models and ensembles offer) runs blockwise."""
    inner = Predictor.from_checkpoint(data["model25"], overlap="auto")

    class VolumeOnly:
        classes = inner.classes
        halo = (1, 0, 0)  # 3 context slices; whole slices in-plane

        def __init__(self):
            self.calls = 0

        def predict_proba_volume(self, volume):
            self.calls += 1
            return inner.predict_proba_volume(volume)

    model = VolumeOnly()
    out = predict_blockwise(model, data["dir"] / "raw3.zarr", tmp_path / "v.zarr", block=(2, 150, 200),
                            progress=False)
    assert model.calls == 3
    # labels of a volume-only predictor: the argmax of its probabilities
    np.testing.assert_array_equal(read_image(out), inner.predict_proba_volume(data["raw"]).argmax(0))


def test_predictor_halo_for_context(data):
    p = Predictor.from_checkpoint(data["model25"], overlap=0.25)
    box = p.block_input((slice(2, 4), slice(0, 10), slice(0, 10)), (6, 150, 200))
    assert box[0] == slice(1, 5)  # one slice of context each side
    box = p.block_input((slice(0, 2), slice(0, 10), slice(0, 10)), (6, 150, 200))
    assert box[0] == slice(0, 3)  # clipped at the volume's first slice (edge slice repeated, as in memory)


def test_metadata_and_markers(data, tmp_path):
    out = predict_blockwise(data["model"], data["dir"] / "raw3.zarr", tmp_path / "o.zarr", block=(4, 100, 100),
                            progress=False)
    meta = read_run_metadata(out)
    assert meta["status"] == "complete"
    assert meta["model_sha256"] == hashlib.sha256(data["model"].read_bytes()).hexdigest()
    assert meta["model"] == str(data["model"].resolve())
    assert meta["input_shape"] == [6, 150, 200] and meta["input_dtype"] == "uint8"
    assert meta["block_shape"] == [4, 100, 100] and meta["n_blocks"] == 2 * 2 * 2
    assert meta["version"] == emseg.__version__
    assert finished_blocks(out) == set(BlockLayout((6, 150, 200), (4, 100, 100)).indices())
    assert read_image(out).shape == (6, 150, 200)  # the emseg readers see one array; .emseg is hidden


def test_resume_partial_run_equals_clean_run(data, tmp_path, cpu_bf16):
    src = data["dir"] / "raw3.zarr"
    clean = predict_blockwise(data["model"], src, tmp_path / "clean.zarr", block=(2, 75, 100), progress=False)
    part = predict_blockwise(data["model"], src, tmp_path / "part.zarr", block=(2, 75, 100), progress=False,
                             max_blocks=5)
    assert read_run_metadata(part)["status"] == "running" and len(finished_blocks(part)) == 5
    predict_blockwise(data["model"], src, part, block=(2, 75, 100), progress=False)  # resumes by default
    assert read_run_metadata(part)["status"] == "complete"
    np.testing.assert_array_equal(read_image(part), read_image(clean))


def test_resume_mismatch_is_an_error(data, tmp_path):
    src = data["dir"] / "raw3.zarr"
    out = predict_blockwise(data["model"], src, tmp_path / "p.zarr", block=(2, 75, 100), progress=False,
                            max_blocks=2)
    with pytest.raises(ResumeError, match=r"block_shape: stored \[2, 75, 100\], now \[3, 75, 100\]"):
        predict_blockwise(data["model"], src, out, block=(3, 75, 100), progress=False)
    other = _checkpoint(tmp_path / "other.pt", seed=5)
    with pytest.raises(ResumeError, match="model_sha256"):
        predict_blockwise(other, src, out, block=(2, 75, 100), progress=False)
    with pytest.raises(ResumeError, match="input"):
        predict_blockwise(data["model"], data["dir"] / "raw2.zarr", out, block=(2, 75, 100), progress=False)
    with pytest.raises(ResumeError, match="threads: stored 1, now 2"):  # oneDNN rounds per thread count
        predict_blockwise(data["model"], src, out, block=(2, 75, 100), progress=False, threads=2)
    with pytest.raises(FileExistsError, match="--resume"):
        predict_blockwise(data["model"], src, out, block=(2, 75, 100), progress=False, resume=False)
    assert len(finished_blocks(out)) == 2  # nothing was mixed in
    predict_blockwise(data["model"], src, out, block=(2, 75, 100), progress=False, resume=True)
    with pytest.raises(FileExistsError, match="complete prediction"):
        predict_blockwise(data["model"], src, out, block=(2, 75, 100), progress=False)


def _store_files(store: Path) -> dict[str, bytes]:
    """Chunk files of a store (metadata with timestamps and the markers left out)."""
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in store.rglob("*")
            if p.is_file() and ".emseg" not in p.parts and p.name not in ("zarr.json", ".zattrs")}


def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path):
    raw = tifffile.imread(EPFL_RAW)[:8, :192, :192]
    write_image(tmp_path / "in.zarr", raw, chunks=(4, 96, 96))
    model = _checkpoint(tmp_path / "m.pt", window=(64, 64))
    block = ["--block", "1", "96", "96"]
    cmd = [sys.executable, "-c", "from emseg.cli import main; main()", "predict", str(model),
           str(tmp_path / "in.zarr"), str(tmp_path / "killed.zarr"), *block, "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # not iterdir: a marker's .tmp counts there
    sigkill_when(proc, lambda: len(finished_blocks(tmp_path / "killed.zarr")) >= 2, timeout=120)
    done = finished_blocks(tmp_path / "killed.zarr")
    assert 2 <= len(done) < 32 and read_run_metadata(tmp_path / "killed.zarr")["status"] == "running"
    # restart: the unfinished run of the same model and input is resumed by default
    from typer.testing import CliRunner

    from emseg.cli import app

    result = CliRunner().invoke(app, ["predict", str(model), str(tmp_path / "in.zarr"),
                                      str(tmp_path / "killed.zarr"), *block, "--quiet"])
    assert result.exit_code == 0, result.output
    predict_blockwise(model, tmp_path / "in.zarr", tmp_path / "clean.zarr", block=(1, 96, 96), progress=False)
    assert read_run_metadata(tmp_path / "killed.zarr")["status"] == "complete"
    killed, clean = _store_files(tmp_path / "killed.zarr"), _store_files(tmp_path / "clean.zarr")
    assert killed.keys() == clean.keys() and killed == clean
    np.testing.assert_array_equal(read_image(tmp_path / "killed.zarr"), read_image(tmp_path / "clean.zarr"))


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as c:
        yield c


def test_local_cluster_equals_serial(data, tmp_path, cluster):
    src = data["dir"] / "raw.h5:em/raw"
    serial = predict_blockwise(data["model25"], src, tmp_path / "serial.zarr", block=(2, 64, 128), progress=False)
    dist = predict_blockwise(data["model25"], src, tmp_path / "dask.zarr", block=(2, 64, 128), progress=False,
                             scheduler=cluster.scheduler_address)
    assert read_run_metadata(dist)["status"] == "complete"
    assert len(finished_blocks(dist)) == 3 * 3 * 2
    np.testing.assert_array_equal(read_image(dist), read_image(serial))
    np.testing.assert_array_equal(read_image(dist), _in_memory(data["model25"], data["raw"]))


def test_threads_are_recorded_and_routes_agree_at_equal_threads(data, tmp_path, cluster):
    """threads=2 here and threads=2 on each Dask worker: bit-identical labels, equal to in memory at 2 threads."""
    src = data["dir"] / "raw3.zarr"
    serial = predict_blockwise(data["model"], src, tmp_path / "s.zarr", block=(2, 75, 100), progress=False, threads=2)
    dist = predict_blockwise(data["model"], src, tmp_path / "d.zarr", block=(2, 75, 100), progress=False, threads=2,
                             scheduler=cluster.scheduler_address)
    assert read_run_metadata(serial)["threads"] == read_run_metadata(dist)["threads"] == 2
    np.testing.assert_array_equal(read_image(dist), read_image(serial))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = _in_memory(data["model"], data["raw"])
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(read_image(serial), expected)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        predict_blockwise(data["model"], src, tmp_path / "x.zarr", progress=False, threads=0)


def test_mode_downsampling_hand_worked():
    labels = np.array([[1, 1, 2, 3],
                       [0, 2, 2, 3],
                       [4, 4, 5, 6]], np.uint8)
    # boxes: {1,1,0,2} -> 1; {2,3,2,3} -> tie 2/3 -> 2; {4,4,4,4} (edge-replicated row) -> 4; {5,6,5,6} -> 5
    np.testing.assert_array_equal(downsample_mode(labels, (2, 2)), [[1, 2], [4, 5]])


def test_ome_zarr_pyramid_metadata(data, tmp_path):
    write_image(tmp_path / "iso.zarr", data["raw"], voxel_size=(5.0, 5.0, 5.0))
    out = predict_blockwise(data["model"], tmp_path / "iso.zarr", tmp_path / "ome.zarr", block=(2, 150, 200),
                            ome_zarr=True, progress=False)
    attrs = json.loads((out / ".zattrs").read_text())
    (ms,) = attrs["multiscales"]
    assert ms["version"] == "0.4"
    assert ms["axes"] == [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    shapes = [(6, 150, 200), (3, 75, 100), (2, 38, 50)]  # isotropic: z halved too; ceil at odd sizes
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    for i, (d, shape) in enumerate(zip(ms["datasets"], shapes)):
        (t,) = d["coordinateTransformations"]
        assert t == {"type": "scale", "scale": [5.0 * 2**i] * 3}
        zarray = json.loads((out / d["path"] / ".zarray").read_text())
        assert tuple(zarray["shape"]) == shape and zarray["dimension_separator"] == "/"
    assert json.loads((out / ".zgroup").read_text())["zarr_format"] == 2
    import zarr

    root = zarr.open_group(str(out), mode="r")
    level0 = root["0"][...]
    np.testing.assert_array_equal(level0, _in_memory(data["model"], data["raw"]))
    np.testing.assert_array_equal(root["1"][...], downsample_mode(level0, (2, 2, 2)))
    np.testing.assert_array_equal(read_image(out), level0)  # emseg (and napari-ome-zarr) open the full resolution


def test_progress_reports_voxels_per_second(data, tmp_path, monkeypatch, capsys):
    import contextlib

    import emseg.inference._blockwise as blockwise_module

    calls = []

    @contextlib.contextmanager
    def fake_bar(description, *, total, unit="", enabled=True):
        calls.append(("open", total, unit, enabled))
        yield lambda n=1, **kw: calls.append(("advance", n, kw.get("status", "")))

    monkeypatch.setattr(blockwise_module, "progress_bar", fake_bar)  # the name the engine calls
    predict_blockwise(data["model"], data["dir"] / "raw3.zarr", tmp_path / "p.zarr", block=(3, 150, 200))
    assert calls[0] == ("open", 6 * 150 * 200, "voxels", True)
    advances = [c for c in calls if c[0] == "advance"]
    assert sum(c[1] for c in advances) == 6 * 150 * 200 and len(advances) == 2
    assert all(c[2].endswith("MVox/s") for c in advances)


def test_progress_is_quiet_off_terminal(data, tmp_path, capsys):
    predict_blockwise(data["model"], data["dir"] / "raw3.zarr", tmp_path / "q.zarr", block=(3, 150, 200),
                      progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # pytest's stderr is not a terminal


def test_huge_volume_to_tiff_is_refused(data, tmp_path, monkeypatch):
    import emseg.inference._predict as predict_module

    monkeypatch.setattr(predict_module, "IN_MEMORY_LIMIT", 1000)
    with pytest.raises(ValueError, match=r"\.zarr"):
        emseg.predict(data["model"], data["dir"] / "raw.tif", tmp_path / "big.tif", progress=False)
    with pytest.raises(ValueError, match="workers need blockwise"):
        emseg.predict(data["model"], data["dir"] / "raw.tif", tmp_path / "x.tif", workers=2, progress=False)


def test_receptive_field_probe_hand_worked():
    from emseg.inference._predictor import _probe_receptive_radius

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 5, padding=2), torch.nn.Conv2d(3, 2, 3, padding=1))
    assert _probe_receptive_radius(net, 1, (64, 64), 16) == 2 + 1
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.Upsample(scale_factor=2))
    # 3x3 at full resolution (1) + pooling cell (1) + 3x3 at half resolution (2 px): 4 at most, 3 at least
    assert _probe_receptive_radius(net, 1, (64, 64), 16) in (3, 4)


def test_receptive_field_probe_grows_only_while_the_gradient_reaches_its_border():
    """A field well inside the first probe is measured there; one that may go past its border (a dense one
    touching it, or a dilated one whose gaps are wider than its distance to the border) makes it grow."""
    from emseg.inference._network import PROBE_START, probe_receptive_radius

    sizes: list[int] = []

    def record(module, args):
        sizes.append(int(args[0].shape[-1]))

    small = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 5, padding=2), torch.nn.Conv2d(2, 2, 5, padding=2))
    small.register_forward_pre_hook(record)
    assert probe_receptive_radius(small, 1, (512, 512), 16) == 4
    assert sizes == [PROBE_START]  # never the whole 512 window

    # dilated 3x3 convolutions (40 px each) + a 5x5 (2 px): taps every 40 px. With three, the field (122 px)
    # ends 6 px from the first probe's border, nearer than its 36-px gaps: it might go on, so the probe grows
    # and confirms; with four (162 px) the field does go on past the first probe
    for layers, radius in ((3, 122), (4, 162)):
        sizes.clear()
        wider = torch.nn.Sequential(*[torch.nn.Conv2d(1, 1, 3, padding=40, dilation=40) for _ in range(layers)],
                                    torch.nn.Conv2d(1, 1, 5, padding=2))
        wider.register_forward_pre_hook(record)
        assert probe_receptive_radius(wider, 1, (512, 512), 16) == radius
        assert sizes == [PROBE_START, 512]
    # and a window smaller than the field: one window-sized probe, as before (taps up to 80 + 2 px fit in 96)
    sizes.clear()
    assert probe_receptive_radius(wider, 1, (192, 192), 16) == 82
    assert sizes == [192]


def test_receptive_field_probe_of_the_default_network_matches_a_window_sized_probe():
    """``unet2d``'s field (94 px) is measured on the 256 probe and equals what one 512 probe measures."""
    from emseg.inference._network import _probe_once, probe_receptive_radius
    from emseg.models import build_model

    torch.manual_seed(0)
    net = build_model("unet2d", in_channels=1, num_classes=3, pretrained=False).eval()
    sizes: list[int] = []
    handle = net.register_forward_pre_hook(lambda module, args: sizes.append(int(args[0].shape[-1])))
    radius = probe_receptive_radius(net, 1, (512, 512), 16)
    assert sizes == [256]
    handle.remove()
    assert radius == _probe_once(net, 1, 512)[0] > 16


def test_global_grid_tiling_matches_monai_sliding_window(data, cpu_bf16):
    """On a whole slice the windows sit where MONAI puts them: probabilities agree to float rounding.

    MONAI runs the network under the same autocast as ours (``precision: auto``: fp32, or bf16 on a CPU with
    native bf16). fp32: 1e-5 measured on the AVX2 development machine, 4e-4 on a 16-core AVX-512 host (oneDNN
    picks other kernels for MONAI's batches there); bf16: 4e-5 on a 2-core AVX512-BF16 host. Against fp32
    MONAI, bf16 moves 0.6 % of these near-uniform random-network labels, hence the same autocast on both sides.
    """
    from conftest import auto_dtype
    from monai.inferers import sliding_window_inference

    from emseg._device import autocast

    p = Predictor.from_checkpoint(data["model"], overlap=0.25, device=torch.device("cpu"), calibrated=False)
    assert p.dtype == auto_dtype(cpu_bf16)
    image = data["raw"][0]
    ours = p.predict_proba_slice(image)
    x = torch.from_numpy(p.normalizer(image))[None, None]
    with torch.no_grad(), autocast(p.device, p.dtype):
        logits = sliding_window_inference(x, roi_size=p._roi(image.shape), sw_batch_size=p.batch_size,
                                          predictor=p.model, overlap=0.25, mode="gaussian", padding_mode="reflect")
    theirs = torch.softmax(logits.float(), 1)[0].numpy()
    assert ours.shape == theirs.shape == (7, 150, 200)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    assert (ours.argmax(0) == theirs.argmax(0)).mean() > 0.999
    if cpu_bf16:  # the bf16 route really ran: it differs from fp32 by more than fp32 rounding
        fp32 = Predictor.from_checkpoint(data["model"], overlap=0.25, device=torch.device("cpu"), calibrated=False,
                                         precision="fp32")
        assert np.abs(fp32.predict_proba_slice(image) - ours).max() > 1e-5


def test_cli_rejects_bad_overlap_and_engine_options_without_zarr(data, tmp_path):
    from typer.testing import CliRunner

    from emseg.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(data["model"]), str(data["dir"] / "raw.tif"), str(tmp_path / "o.zarr"),
                                 "--overlap", "lots"])
    assert result.exit_code == 2 and "--overlap must be a number in [0, 1) or 'auto', got 'lots'" in result.output
    result = runner.invoke(app, ["predict", str(data["model"]), str(data["dir"] / "raw.tif"), str(tmp_path / "o.tif"),
                                 "--ome-zarr"])
    assert result.exit_code == 2 and "ome_zarr need blockwise prediction" in result.output
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.tif").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="--jit is CPU-only, and emseg.predict would use the GPU")
def test_jit_predictor_agrees_with_eager_and_runs_blockwise(data, tmp_path):
    """--jit (fp32): the frozen TorchScript copy is really used, agrees with the eager network, the engine is exact.

    ``precision="fp32"`` is explicit, so the frozen route runs on either kind of CPU (under ``auto`` on a CPU with
    native bf16, --jit gives way to bf16: next test).
    """
    eager = Predictor.from_checkpoint(data["model"], overlap="auto", precision="fp32")
    frozen = Predictor.from_checkpoint(data["model"], overlap="auto", jit=True, precision="fp32")
    p_eager, p_jit = eager.predict_proba_volume(data["raw"]), frozen.predict_proba_volume(data["raw"])
    assert frozen.jit and frozen._jit_module is not None  # no silent fall-back to eager
    assert np.abs(p_jit - p_eager).max() < 1e-4
    assert (p_jit.argmax(0) == p_eager.argmax(0)).mean() > 0.9999
    expected, _ = frozen.predict_volume(data["raw"])  # labels from the frozen network's blended logits
    out = emseg.predict(data["model"], str(data["dir"] / "raw3.zarr"), tmp_path / "jit.zarr", block=(2, 75, 100),
                        jit=True, precision="fp32", progress=False)
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[...], expected)
    assert read_run_metadata(out)["predictor_options"]["jit"] is True
    emseg.predict(data["model"], data["dir"] / "raw.tif", tmp_path / "jit.tif", jit=True, precision="fp32",
                  progress=False)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "jit.tif"), expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="--jit is CPU-only, and emseg.predict would use the GPU")
def test_jit_under_bf16_runs_eagerly_with_a_warning(data, tmp_path, monkeypatch, caplog):
    """Under bf16 the frozen fp32 copy would be the slower route: --jit is turned off, with a warning naming the fix."""
    from emseg._device import NATIVE_BF16_ENV

    monkeypatch.setenv(NATIVE_BF16_ENV, "1")  # precision auto -> bf16, as on an AMX / AVX512-BF16 CPU
    with caplog.at_level("WARNING", logger="emseg.inference._predictor"):
        asked = Predictor.from_checkpoint(data["model"], overlap="auto", jit=True)
    assert asked.dtype == torch.bfloat16 and not asked.jit
    assert "CPU fp32 route" in caplog.text and "--precision fp32 --jit" in caplog.text
    eager = Predictor.from_checkpoint(data["model"], overlap="auto")
    labels, _ = asked.predict_volume(data["raw"])
    assert asked._jit_module is None
    np.testing.assert_array_equal(labels, eager.predict_volume(data["raw"])[0])  # the same eager bf16 route
    out = emseg.predict(data["model"], str(data["dir"] / "raw3.zarr"), tmp_path / "bf16.zarr", block=(2, 75, 100),
                        jit=True, progress=False)
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[...], labels)  # blockwise = in memory
    forced = Predictor.from_checkpoint(data["model"], overlap="auto", jit=True, precision="fp32")
    forced.predict_proba_slice(data["raw"][0])
    assert forced.jit and forced._jit_module is not None  # --precision fp32 --jit: the frozen copy


def test_jit_falls_back_to_eager_when_the_trace_does_not_hold(data, caplog):
    """A network whose forward depends on the input shape traces wrongly for other shapes: caught, eager used."""
    inner = Predictor.from_checkpoint(data["model"], overlap=0.0, device=torch.device("cpu"))  # jit: CPU only

    class ShapeDependent(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            out = self.net(x)
            return out if x.shape[-1] >= 64 else -out  # Python branch: frozen into the trace

    predictor = Predictor(ShapeDependent(inner.model).eval(), classes=inner.classes, normalizer=inner.normalizer,
                          window=(64, 64), overlap=0.0, divisor=4, jit=True, device=torch.device("cpu"),
                          precision="fp32")
    predictor.predict_proba_slice(data["raw"][0, :64, :64])  # traced at 64 x 64
    assert predictor.jit
    small = data["raw"][0, :32, :32]  # 32 x 32 window: the trace holds the other branch
    with caplog.at_level("WARNING", logger="emseg.inference._predictor"):
        got = predictor.predict_proba_slice(small)
    assert not predictor.jit and "disagrees with the eager network" in caplog.text
    want = Predictor(ShapeDependent(inner.model).eval(), classes=inner.classes, normalizer=inner.normalizer,
                     window=(64, 64), overlap=0.0, divisor=4, device=torch.device("cpu"),
                     precision="fp32").predict_proba_slice(small)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_blending_in_torch_equals_numpy_blending():
    """The accelerator path (blend and softmax with torch where the logits are) gives the CPU path's numbers."""
    from emseg.inference._tiling import predict_region

    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 150, 200)).astype(np.float32)
    conv = torch.nn.Conv2d(1, 3, 5, padding=2)

    def run(batch):
        with torch.no_grad():
            return conv(batch)

    region = (slice(20, 130), slice(35, 200))
    kwargs = dict(origin=(0, 0), full_shape=(150, 200), region=region, roi=(64, 64), overlap=0.25, run=run,
                  batch_size=3, num_classes=3)
    for output in ("logits", "probabilities"):
        host = predict_region(image, output=output, **kwargs)
        device = predict_region(image, output=output, blend_in_torch=True, **kwargs)
        assert host.shape == device.shape == (3, 110, 165) and device.dtype == np.float32
        np.testing.assert_allclose(device, host, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(device.sum(0), 1.0, atol=1e-5)
    labels = predict_region(image, output="labels", **kwargs)
    assert labels.dtype == np.uint8 and labels.shape == (110, 165)
    np.testing.assert_array_equal(labels, host.argmax(0))  # random logits: no near-ties
    np.testing.assert_array_equal(predict_region(image, output="labels", blend_in_torch=True, **kwargs), labels)


def test_first_argmax_is_numpys_argmax_with_ties_to_the_first_class():
    from emseg.inference._tiling import first_argmax

    scores = np.random.default_rng(1).integers(0, 3, size=(5, 40, 30)).astype(np.float32)  # many ties
    assert first_argmax(scores).dtype == np.uint8
    np.testing.assert_array_equal(first_argmax(scores), scores.argmax(0))
    np.testing.assert_array_equal(first_argmax(scores[:, 0]), scores[:, 0].argmax(0))
    assert first_argmax(np.zeros((300, 2, 2), np.float32)).dtype == np.uint16
    many = np.random.default_rng(2).random((300, 3, 4)).astype(np.float32)
    assert many.argmax(0).max() > 255
    np.testing.assert_array_equal(first_argmax(many), many.argmax(0))  # labels past 255 in uint16
    frozen = scores.copy()
    frozen.flags.writeable = False  # e.g. a memory-mapped or read-only block
    np.testing.assert_array_equal(first_argmax(frozen), scores.argmax(0))
    np.testing.assert_array_equal(first_argmax(scores.astype(np.float16)), scores.argmax(0))


def test_local_cluster_workers_run_without_the_statistical_profiler():
    from emseg.inference._dask import _client

    client, cluster = _client(1, None)
    try:
        enabled = client.run(lambda: __import__("dask").config.get("distributed.worker.profile.enabled"))
        assert list(enabled.values()) == [False]
    finally:
        client.close()
        cluster.close()


def test_one_window_slice_labels_skip_blending_and_agree_with_every_region():
    """A window holding the whole slice: labels are the argmax of its logits, for the slice and any part of it."""
    from emseg.inference._tiling import predict_region

    image = np.random.default_rng(3).normal(size=(1, 60, 90)).astype(np.float32)
    conv = torch.nn.Conv2d(1, 4, 5, padding=2)
    calls = []

    def run(batch):
        calls.append(tuple(batch.shape))
        with torch.no_grad():
            return conv(batch)

    kwargs = dict(full_shape=(60, 90), roi=(64, 96), overlap=0.25, run=run, batch_size=2, num_classes=4)
    whole = (slice(0, 60), slice(0, 90))
    labels = predict_region(image, origin=(0, 0), region=whole, output="labels", **kwargs)
    logits = predict_region(image, origin=(0, 0), region=whole, output="logits", **kwargs)  # blended path
    assert calls == [(1, 1, 64, 96)] * 2  # one padded window each time
    np.testing.assert_array_equal(labels, logits.argmax(0))
    part = (slice(10, 41), slice(5, 77))
    np.testing.assert_array_equal(predict_region(image, origin=(0, 0), region=part, output="labels", **kwargs),
                                  labels[10:41, 5:77])
    on_device = predict_region(image, origin=(0, 0), region=part, output="labels", blend_in_torch=True, **kwargs)
    np.testing.assert_array_equal(on_device, labels[10:41, 5:77])

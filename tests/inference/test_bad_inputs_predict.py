"""Bad input to `emseg predict`: one clear message (file or option, problem, fix), exit 2, no traceback, no output.

Each case is a row of docs/BAD_INPUTS.md ("Prediction").
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

import emseg
from emseg.cli import app
from emseg.inference import Predictor, predict_blockwise
from emseg.io import write_image

from test_blockwise import EPFL_RAW, _checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 4 x 96 x 128 EPFL crop as plain, zlib and ImageJ TIFFs, a zarr store holding it, and two tiny models."""
    out = tmp_path_factory.mktemp("bad_predict")
    raw = tifffile.imread(EPFL_RAW)[:4, :96, :128]
    tifffile.imwrite(out / "raw.tif", raw, photometric="minisblack")
    tifffile.imwrite(out / "raw_zlib.tif", raw, photometric="minisblack", compression="zlib")
    tifffile.imwrite(out / "raw_imagej.tif", raw, imagej=True)
    write_image(out / "store.zarr/raw", raw)
    return {"dir": out, "raw": raw, "model": _checkpoint(out / "m.pt"),
            "model3": _checkpoint(out / "m3.pt", features=(4, 8, 16))}  # halves its input twice: window multiple of 4


def _run(*args: str):
    result = CliRunner().invoke(app, ["predict", *map(str, args), "--quiet"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output  # a message, not a crash
    return " ".join(result.output.split())  # on one line: rich wraps long paths at the console's width


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ----------------------------------------------------------------- data loss: an output is an input or the other output


def test_output_same_as_input_refused_even_with_overwrite(files, tmp_path):
    src = tmp_path / "stack.tif"
    src.write_bytes((files["dir"] / "raw.tif").read_bytes())
    before = _digest(src)
    out = _run(files["model"], src, src, "--overwrite")
    assert f"the labels output {src} is the input image {src}" in out
    assert "even with --overwrite" in out and "stack_labels.tif" in out
    (tmp_path / "link.tif").symlink_to(src)  # the same file under another name
    out = _run(files["model"], tmp_path / "link.tif", tmp_path / "." / "stack.tif", "--overwrite")
    assert "is the input image" in out
    assert _digest(src) == before and _entries(tmp_path) == {"stack.tif", "link.tif"}


def test_probabilities_same_as_labels_refused(files, tmp_path):
    out = _run(files["model"], files["dir"] / "raw.tif", tmp_path / "l.tif", "--probabilities", tmp_path / "l.tif")
    assert f"--probabilities {tmp_path / 'l.tif'} is the labels output {tmp_path / 'l.tif'}" in out
    assert "l_probabilities.tif" in out
    out = _run(files["model"], files["dir"] / "raw.tif", tmp_path / "l.tif", "--probabilities",
               tmp_path / "l.tif", "--overwrite")
    assert "one would overwrite the other" in out
    assert _entries(tmp_path) == set()


def test_zarr_output_holding_or_inside_the_input_store_refused(files, tmp_path):
    store = files["dir"] / "store.zarr"
    out = _run(files["model"], f"{store}/raw", store, "--overwrite")  # replacing the store deletes the input array
    assert f"the labels output {store} holds the input image {store}/raw" in out
    out = _run(files["model"], f"{store}/raw", f"{store}/raw", "--overwrite")
    assert "is the input image" in out
    with pytest.raises(ValueError, match="holds the input image"):  # the Python API refuses too
        predict_blockwise(files["model"], f"{store}/raw", store, overwrite=True, progress=False)
    np.testing.assert_array_equal(emseg.io.read_image(f"{store}/raw"), files["raw"])


# ----------------------------------------------------------------- truncated or damaged TIFF


def _cut(src: Path, dst: Path, keep) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[:keep(len(data))])
    return dst


@pytest.mark.parametrize("source, keep", [
    ("raw.tif", lambda n: n // 2),  # cut in the middle
    ("raw.tif", lambda n: n - 2048),  # the last kilobytes missing
    ("raw_zlib.tif", lambda n: n - 2048),  # compressed pages
    ("raw_imagej.tif", lambda n: n - 2048),  # ImageJ: tifffile would fall back to the first page alone
])
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])  # in memory and blockwise
def test_truncated_tiff_named(files, tmp_path, source, keep, suffix):
    cut = _cut(files["dir"] / source, tmp_path / "cut.tif", keep)
    out = _run(files["model"], cut, tmp_path / f"labels{suffix}")
    assert f"{cut}:" in out and "the file is truncated or damaged; re-export or re-copy it" in out
    assert _entries(tmp_path) == {"cut.tif"}  # no output, not even an unfinished store


@pytest.mark.parametrize("where", ["pixels", "headers"])
def test_damaged_tiff_named(files, tmp_path, where):
    """Garbage in a page's compressed pixels is found only when that page is read (the lazy read names the
    file); garbage over the page headers makes tifffile fall back to fewer pages (refused when opened)."""
    src = files["dir"] / "raw_zlib.tif"
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[2]
        start = page.dataoffsets[0] + 100 if where == "pixels" else page.offset
    data = bytearray(src.read_bytes())
    data[start:start + 300] = bytes(300)
    (tmp_path / "bad.tif").write_bytes(bytes(data))
    for output in ("l.tif", "l.zarr"):
        out = _run(files["model"], tmp_path / "bad.tif", tmp_path / output)
        problem = "cannot read page" if where == "pixels" else "its page headers do not hold together"
        assert f"{tmp_path / 'bad.tif'}: {problem}" in out and "the file is truncated or damaged" in out
    assert _entries(tmp_path) == {"bad.tif"}  # the blockwise store had no finished block: removed


def test_truncated_tiff_in_a_training_config_named(tmp_path, epfl_crop):
    cut = _cut(epfl_crop["raw"], tmp_path / "cut.tif", lambda n: n - 4096)
    config = tmp_path / "c.yaml"
    config.write_text(f"""
data:
  train: {{image: {cut}, labels: {epfl_crop['labels']}, slices: "0:3"}}
  val: {{image: {cut}, labels: {epfl_crop['labels']}, slices: "3"}}
  classes: [a, b, c, d, e, f, g]
model: {{name: unet2d, features: [4, 8]}}
training: {{max_minutes: 0.1, epochs: 1, iterations_per_epoch: 1, batch_size: 1, patch_size: 64}}
""")
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"{cut}:" in result.output and "truncated or damaged; re-export or re-copy it" in result.output


# ----------------------------------------------------------------- option ranges


@pytest.mark.parametrize("window, message", [
    (("0", "0"), "window (--window Y X) must be two positive whole numbers of pixels, got (0, 0)"),
    (("-5", "-5"), "window (--window Y X) must be two positive whole numbers of pixels, got (-5, -5)"),
    (("3", "3"), "window 3 x 3 (--window) is too small for this network: the minimum is 4 x 4"),
    (("6", "6"), "window 6 x 6 (--window) does not fit this network: each side must be a multiple of 4"),
])
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_window_out_of_range(files, tmp_path, window, message, suffix):
    out = _run(files["model3"], files["dir"] / "raw.tif", tmp_path / f"l{suffix}", "--window", *window)
    assert message in out
    assert _entries(tmp_path) == set()


@pytest.mark.parametrize("batch", ["0", "-2"])
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_batch_size_out_of_range(files, tmp_path, batch, suffix):
    out = _run(files["model"], files["dir"] / "raw.tif", tmp_path / f"l{suffix}", "--batch-size", batch)
    assert f"batch_size (--batch-size) must be a whole number of windows per forward pass, at least 1, got {batch}" in out
    assert _entries(tmp_path) == set()


def test_window_and_batch_size_checked_in_the_python_api(files, tmp_path):
    with pytest.raises(ValueError, match=r"window \(--window Y X\) must be two positive"):
        emseg.predict(files["model"], files["dir"] / "raw.tif", tmp_path / "l.tif", window=(0, 0), progress=False)
    with pytest.raises(ValueError, match="batch_size .* at least 1, got -2"):
        emseg.predict(files["model"], files["dir"] / "raw.tif", tmp_path / "l.zarr", batch_size=-2, progress=False)
    with pytest.raises(ValueError, match="the minimum is 4 x 4"):
        Predictor.from_checkpoint(files["model3"], window=(3, 3))
    Predictor.from_checkpoint(files["model3"], window=(8, 12))  # multiples of 4 are fine
    assert _entries(tmp_path) == set()


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_negative_workers_refused(files, tmp_path, suffix):
    out = _run(files["model"], files["dir"] / "raw.tif", tmp_path / f"l{suffix}", "--workers", "-1")
    assert "workers (--workers) must be 0 (predict in this process) or a number of Dask worker processes, " \
           "at least 1; got -1" in out
    assert "LocalCluster" not in out and _entries(tmp_path) == set()


# ----------------------------------------------------------------- NaN / inf


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_non_finite_voxels_refused(files, tmp_path, suffix):
    raw = files["raw"].astype(np.float32)
    raw[2, 10:20, 10:20] = np.nan  # the 10 x 10 patch that became a 42 x 42 area of class 0
    raw[3, 0, 0] = np.inf
    tifffile.imwrite(tmp_path / "nan.tif", raw, photometric="minisblack")
    out = _run(files["model"], tmp_path / "nan.tif", tmp_path / f"l{suffix}")
    assert f"{tmp_path / 'nan.tif'}: 101 of 49,152 voxels are not finite numbers (NaN or inf), the first in " \
           "slice z=2" in out
    assert "numpy.nan_to_num" in out
    assert _entries(tmp_path) == {"nan.tif"}


def test_finite_float_image_is_segmented(files, tmp_path):
    """The check does not refuse ordinary float images (and agrees with the integer image's labels)."""
    tifffile.imwrite(tmp_path / "f.tif", files["raw"].astype(np.float32), photometric="minisblack")
    emseg.predict(files["model"], tmp_path / "f.tif", tmp_path / "f_labels.tif", precision="fp32", progress=False)
    emseg.predict(files["model"], files["dir"] / "raw.tif", tmp_path / "u_labels.tif", precision="fp32",
                  progress=False)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "f_labels.tif"), tifffile.imread(tmp_path / "u_labels.tif"))


# ----------------------------------------------------------------- unwritable output folder


@pytest.mark.parametrize("option, target", [
    ("output", "blocker/labels.tif"),  # the parent is a regular file
    ("output", "blocker/deeper/labels.zarr"),  # blockwise, a grandparent is a file
    ("--probabilities", "blocker/probs.tif"),
])
def test_unwritable_output_refused_before_any_work(files, tmp_path, monkeypatch, option, target):
    (tmp_path / "blocker").write_text("a file, not a folder")
    calls = []
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: calls.append(a)))
    labels = tmp_path / target if option == "output" else tmp_path / "labels.tif"
    extra = ["--probabilities", tmp_path / target] if option != "output" else []
    out = _run(files["model"], files["dir"] / "raw.tif", labels, *extra)
    what = "labels output" if option == "output" else "--probabilities output"
    assert f"cannot write the {what} {tmp_path / target}: {tmp_path / 'blocker'} is a file, not a folder; " \
           "choose another output path" in out
    assert calls == [] and _entries(tmp_path) == {"blocker"}  # refused before the model was even loaded


def test_folder_refusing_new_files_is_named(files, tmp_path):
    """/proc refuses new files even to root: the check really tries to create one."""
    out = _run(files["model"], files["dir"] / "raw.tif", "/proc/emseg-test/labels.tif")
    assert "cannot write the labels output /proc/emseg-test/labels.tif: no file can be created in /proc" in out
    assert "choose another folder" in out


# ----------------------------------------------------------------- --probabilities and blockwise options


def test_probabilities_with_blockwise_options_names_what_to_drop(files, tmp_path):
    out = _run(files["model"], files["dir"] / "raw.tif", tmp_path / "l.zarr", "--probabilities", tmp_path / "p.tif",
               "--block", "1", "64", "64", "--workers", "2")
    assert "--probabilities are computed in memory, not block by block, so --block, --workers cannot apply" in out
    assert "drop --block, --workers" in out and "or drop --probabilities to predict" in out
    assert _entries(tmp_path) == set()
    # without the blockwise options a .zarr output with --probabilities is predicted in memory
    result = CliRunner().invoke(app, ["predict", str(files["model"]), str(files["dir"] / "raw.tif"),
                                      str(tmp_path / "l.zarr"), "--probabilities", str(tmp_path / "p.tif"), "--quiet"])
    assert result.exit_code == 0, result.output
    probs = tifffile.imread(tmp_path / "p.tif")
    assert probs.shape == (4, 7, 96, 128) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    np.testing.assert_array_equal(emseg.io.read_image(tmp_path / "l.zarr"), probs.argmax(axis=1))

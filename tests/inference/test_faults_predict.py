"""Faults during `emseg predict`: a full disk and kill -9, blockwise and in memory.

After a failure nothing may look finished (no output file in place, a blockwise store says ``running``), a
full disk is named with the output it hit, and rerunning the same command gives exactly the uninterrupted
result.  Each case is a row of docs/BAD_INPUTS.md ("Faults").
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

import emseg
from emseg.cli import app
from emseg.inference import predict_blockwise
from emseg.inference._blockwise import finished_blocks, read_run_metadata
from emseg.io import read_image, write_image

from conftest import sigkill_when
from test_blockwise import EPFL_RAW, SRC, _checkpoint, _store_files

BLOCK = ("1", "96", "96")


@pytest.fixture(autouse=True)
def _engine_threads(one_torch_thread):
    """References computed here use one torch thread, as the engine and the killed subprocesses do."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults_predict")
    raw = tifffile.imread(EPFL_RAW)
    write_image(out / "in.zarr", raw[:8, :192, :192], chunks=(4, 96, 96))
    tifffile.imwrite(out / "in.tif", raw[:4, :384, :384], photometric="minisblack")
    tifffile.imwrite(out / "wide.tif", raw[:2, :300, :300], photometric="minisblack")
    model = _checkpoint(out / "m.pt", window=(64, 64))
    return {"dir": out, "model": model}


@pytest.fixture(scope="module")
def clean_blockwise(files, tmp_path_factory):
    """The uninterrupted blockwise run every killed-and-resumed run must equal, bit for bit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = predict_blockwise(files["model"], files["dir"] / "in.zarr", tmp_path_factory.mktemp("clean") / "c.zarr",
                                block=tuple(map(int, BLOCK)), precision="fp32", progress=False)
    finally:
        torch.set_num_threads(before)
    return out


def _said(result) -> str:
    """The command's output on one line (rich wraps long paths at the console's width)."""
    return " ".join(result.output.split())


def _visible(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def _cli(*args) -> list[str]:
    return [sys.executable, "-c", "from emseg.cli import main; main()", *map(str, args)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------- kill -9, blockwise


@pytest.mark.parametrize("after_blocks", [1, 2, 3])
def test_sigkill_blockwise_at_several_moments_then_rerun_is_bit_identical(files, tmp_path, clean_blockwise,
                                                                          after_blocks):
    out = tmp_path / "killed.zarr"
    args = ["predict", files["model"], files["dir"] / "in.zarr", out, "--block", *BLOCK, "--precision", "fp32",
            "--quiet"]
    proc = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sigkill_when(proc, lambda: len(finished_blocks(out)) >= after_blocks)
    done = finished_blocks(out)
    assert after_blocks <= len(done) < 32
    assert read_run_metadata(out)["status"] == "running"  # nothing claims to be finished
    result = CliRunner().invoke(app, [str(a) for a in args])  # the same command again: resumes
    assert result.exit_code == 0, result.output
    assert read_run_metadata(out)["status"] == "complete" and len(finished_blocks(out)) == 32
    killed, clean = _store_files(out), _store_files(clean_blockwise)
    assert killed.keys() == clean.keys() and killed == clean
    np.testing.assert_array_equal(read_image(out), read_image(clean_blockwise))


# ----------------------------------------------------------------- kill -9, in memory to TIFF


@pytest.mark.parametrize("moment", ["labels staged", "probabilities half written"])
def test_sigkill_in_memory_tiff_leaves_no_output_that_looks_complete(files, tmp_path, moment):
    """Labels are staged under a hidden temporary until the probabilities are written: a kill at either
    moment leaves neither ``labels.tif`` nor ``probs.tif``; the rerun writes both, as a clean run does."""
    args = ["predict", files["model"], files["dir"] / "in.tif", tmp_path / "labels.tif", "--probabilities",
            tmp_path / "probs.tif", "--precision", "fp32", "--quiet"]

    def ready() -> bool:
        if moment == "labels staged":
            return any(p.name.startswith(".labels.tmp-") for p in tmp_path.iterdir())
        return any(p.name.startswith(".probs.tmp-") and p.stat().st_size > 2**20 for p in tmp_path.iterdir())

    proc = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sigkill_when(proc, ready)
    assert _visible(tmp_path) == set()  # only hidden .tmp- files: nothing that looks like a result
    left = {p.name for p in tmp_path.iterdir() if ".tmp-" in p.name}
    assert left  # the killed writer's temporary ...
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert not left & {p.name for p in tmp_path.iterdir()}  # ... is removed by the rerun
    emseg.predict(files["model"], files["dir"] / "in.tif", tmp_path / "ref.tif", precision="fp32", progress=False)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.tif"), tifffile.imread(tmp_path / "ref.tif"))
    probs = tifffile.imread(tmp_path / "probs.tif")
    assert probs.shape == (4, 7, 384, 384)
    np.testing.assert_array_equal(probs.argmax(axis=1), tifffile.imread(tmp_path / "labels.tif"))


# ----------------------------------------------------------------- full disk


def test_full_disk_writing_zarr_probabilities_names_the_output_and_leaves_nothing(files, tmp_path, monkeypatch):
    """ENOSPC on one chunk of the probabilities while its sibling chunks are still being written (zarr
    writes a slab's chunks concurrently and lets them run on after one fails): no hidden temporary
    may survive, the labels are not left in place either, and the message names the output."""
    from zarr.storage import LocalStore

    original = LocalStore.set

    async def full_disk(self, key, value, *args, **kwargs):
        if "probs" in str(self.root) and "/c/" in f"/{key}":
            if key.endswith("c/0/0/1"):
                raise OSError(errno.ENOSPC, "No space left on device")
            await asyncio.sleep(0.3)  # the siblings are still in flight when the error surfaces
        return await original(self, key, value, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "set", full_disk)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(files["model"]), str(files["dir"] / "wide.tif"),
                                      str(out / "labels.zarr"), "--probabilities", str(out / "probs.zarr"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"cannot write the --probabilities output {out / 'probs.zarr'}: no space left on the device holding " \
           f"{out}" in _said(result)
    assert "free space there or choose another folder for it" in _said(result)
    assert f"The labels {out / 'labels.zarr'} were not written either" in _said(result)
    time.sleep(0.5)  # a write still running would show up now
    assert sorted(p.name for p in out.iterdir()) == []  # no .probs.tmp-*.zarr, no labels


@pytest.mark.parametrize("fail_at", [1, 3])
def test_full_disk_blockwise_names_the_store_and_resumes(files, tmp_path, monkeypatch, clean_blockwise, fail_at):
    """ENOSPC writing block ``fail_at``: the store is named; with finished blocks it stays resumable (status
    ``running``) and the rerun equals a clean run; with none it is removed."""
    from emseg.inference import _blockwise

    original, calls = _blockwise.write_block, []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) >= fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(_blockwise, "write_block", full_disk)
    out = tmp_path / "labels.zarr"
    args = ["predict", str(files["model"]), str(files["dir"] / "in.zarr"), str(out), "--block", *BLOCK,
            "--precision", "fp32", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"cannot write the labels output {out}: no space left on the device holding {tmp_path}" in _said(result)
    assert "free space there or choose another folder for it" in _said(result)
    if fail_at == 1:
        assert "Nothing was kept" in _said(result) and not out.exists()
        return
    done = len(finished_blocks(out))
    assert f"{done} finished blocks are kept: rerun the same command to resume" in _said(result) and done >= 1
    assert read_run_metadata(out)["status"] == "running"
    monkeypatch.setattr(_blockwise, "write_block", original)  # space freed
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _store_files(out) == _store_files(clean_blockwise)


def test_full_disk_writing_tiff_labels_names_the_output_and_leaves_nothing(files, tmp_path, monkeypatch):
    """ENOSPC half way through a TIFF: the temporary is removed, no labels.tif appears, the output is named."""
    import tifffile as tf

    original = tf.imwrite

    def full_disk(path, data, *args, **kwargs):
        Path(path).write_bytes(b"II*\0" + bytes(1000))  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf, "imwrite", full_disk)
    result = CliRunner().invoke(app, ["predict", str(files["model"]), str(files["dir"] / "wide.tif"),
                                      str(tmp_path / "labels.tif"), "--quiet"])
    monkeypatch.setattr(tf, "imwrite", original)
    assert result.exit_code == 2, result.output
    assert f"cannot write the labels output {tmp_path / 'labels.tif'}: no space left on the device holding " \
           f"{tmp_path}" in _said(result) and "Nothing was written" in _said(result)
    assert list(tmp_path.iterdir()) == []

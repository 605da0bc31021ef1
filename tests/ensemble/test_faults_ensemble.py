"""Faults: `emseg benchmark` and `emseg ensemble` killed (SIGKILL) at several moments, then run again, give
the same numbers as an uninterrupted run and leave nothing that looks finished; `emseg objects` on a full
disk names the table and leaves no table behind.

Each command runs in a child process (one torch thread, fp32 training) that is killed as soon as a file
shows that it reached the moment under test. The child's ``os.replace`` waits a little before each rename,
so a kill "while a file is being committed" lands between a complete temporary and its rename, the
moment an atomic writer exists to survive. The reruns and the uninterrupted reference run in this
process (one torch thread as well), which keeps the tests short.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

import emseg
from conftest import write_bench
from emseg.cli import app

SRC = str(Path(emseg.__file__).resolve().parents[1])
# The CLI in a child process whose renames wait SLOW seconds (0: not slowed).
CHILD = """import os, sys, time
slow = float(os.environ.get("EMSEG_TEST_SLOW_RENAMES", "0"))
if slow:
    _replace = os.replace
    def _slow_replace(*args, **kwargs):
        time.sleep(slow)
        return _replace(*args, **kwargs)
    os.replace = _slow_replace
from emseg.cli import main
sys.argv[0] = "emseg"
main()
"""


def _env(tmp: Path, slow: float = 0.0) -> dict[str, str]:
    (tmp / "tmpdir").mkdir(exist_ok=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TMPDIR": str(tmp / "tmpdir"),
            "EMSEG_TEST_SLOW_RENAMES": str(slow)}


def _run(args: list[str]) -> None:
    """The command in this process, with one torch thread like the child."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output


def _run_killed(args: list[str], env: dict[str, str], reached) -> None:
    """Start the command, SIGKILL it as soon as ``reached()`` is true; fail if it finished first."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, *args], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while child.poll() is None and time.monotonic() < deadline:
            if reached():
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
                return
            time.sleep(0.002)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    pytest.fail(f"the command ended (exit {child.returncode}) before the moment to kill it: {child.stderr.read()}")


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") and ".tmp-" in p.name]


# ----------------------------------------------------------------------------- emseg benchmark

UNET = "runs/unet-a__dice-ce__seed0"


@pytest.fixture(scope="module")
def bench_reference(tmp_path_factory, epfl_crop):
    """A benchmark of one tiny U-Net (3 epochs of 2 steps), run once unharmed."""
    folder = tmp_path_factory.mktemp("bench_faults")
    bench = write_bench(folder, epfl_crop)
    text = bench.read_text()
    dropped = ("unet-b", "random-forest", "method:", "ensembles:", "second_annotation")
    text = "\n".join(line for line in text.splitlines() if not any(d in line for d in dropped))
    text = text.replace("budget: {minutes: 0.3, device: auto}", "budget: {minutes: 5, device: auto}")
    text = text.replace("training: {epochs: 2,", "training: {precision: fp32, epochs: 3,")
    bench.write_text(text + "\n")
    assert "precision: fp32, epochs: 3" in text and "random-forest" not in text
    reference = folder / "reference"
    _run(["benchmark", str(bench), "--out", str(reference), "--no-report", "-q"])
    return bench, reference


def _bench_numbers(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    numbers = {}
    for r in results["runs"]:
        numbers[r["run"]] = {"metrics": r["metrics"], "curve": [(c["epoch"], c["train_loss"], c["val_mean_iou"])
                                                                for c in r["curve"]],
                             **{k: r.get(k) for k in ("best_epoch", "epochs", "best_val_mean_iou", "stop_reason",
                                                      "parameters", "weights", "members", "fractions")}}
    return numbers


BENCH_KILLS = {
    "training, after epoch 1": f"{UNET}/last.pt",
    "committing a run's result.json": f"{UNET}/.result.tmp-*",
    "writing results.json": ".results.tmp-*",
}


@pytest.mark.parametrize("pattern", BENCH_KILLS.values(), ids=BENCH_KILLS.keys())
def test_benchmark_killed_and_rerun_equals_an_uninterrupted_run(tmp_path, bench_reference, pattern):
    bench, reference = bench_reference
    out = tmp_path / "out"
    args = ["benchmark", str(bench), "--out", str(out), "--no-report", "-q"]
    _run_killed(args, _env(tmp_path, slow=0.3), lambda: any(out.glob(pattern)))
    # nothing that looks finished: no results table; a run marker present is complete
    assert not (out / "results.json").exists()
    for marker in out.glob("runs/*/result.json"):
        assert json.loads(marker.read_text())["metrics"]
    _run(args)  # the rerun continues (a finished run is kept, training resumes from last.pt)
    assert _bench_numbers(out) == _bench_numbers(reference)
    np.testing.assert_array_equal(np.load(out / UNET / "test_probabilities.npy"),
                                  np.load(reference / UNET / "test_probabilities.npy"))
    assert (out / "results.csv").is_file()
    assert _temporaries(out) == []  # what the killed writers left was removed


# ----------------------------------------------------------------------------- emseg ensemble


@pytest.fixture(scope="module")
def ensemble_reference(tmp_path_factory, seed_runs):
    folder = tmp_path_factory.mktemp("ensemble_faults")
    members = str(seed_runs[1].out_dir)
    reference = folder / "reference"
    _run(["ensemble", members, "--out", str(reference), "--step", "0.05", "-q"])
    return members, reference


def _ensemble_numbers(out: Path) -> tuple:
    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    report = json.loads((out / "ensemble.json").read_text())
    states = [{k: v.numpy().tolist() for k, v in m["state"].items()} for m in ckpt["members"]]
    return ckpt["weights"], ckpt["member_names"], report, states


ENSEMBLE_KILLS = {
    "predicting the validation data": ("tmpdir", "emseg-ensemble-*"),
    "writing model.pt": ("out", ".model.tmp-*"),
    "between model.pt and ensemble.json": ("out", "model.pt"),
}


@pytest.mark.parametrize("where", ENSEMBLE_KILLS.values(), ids=ENSEMBLE_KILLS.keys())
def test_ensemble_killed_and_rerun_equals_an_uninterrupted_run(tmp_path, ensemble_reference, epfl_crop, where):
    from emseg.inference import Predictor

    members, reference = ensemble_reference
    out = tmp_path / "out"
    folder, pattern = where
    watched = out if folder == "out" else tmp_path / "tmpdir"
    args = ["ensemble", members, "--out", str(out), "--step", "0.05", "-q"]
    _run_killed(args, _env(tmp_path, slow=0.3), lambda: any(watched.glob(pattern)))
    assert not (out / "ensemble.json").exists()  # the report, written last, marks a finished ensemble
    _run(args)  # no --overwrite needed: the interrupted build is built again
    assert _ensemble_numbers(out) == _ensemble_numbers(reference)
    image = tifffile.imread(epfl_crop["raw"])[3]
    np.testing.assert_array_equal(Predictor.from_checkpoint(out, precision="fp32").predict_proba_slice(image),
                                  Predictor.from_checkpoint(reference, precision="fp32").predict_proba_slice(image))
    assert _temporaries(out) == []


def test_finished_ensemble_is_not_replaced_without_overwrite(tmp_path, ensemble_reference):
    members, reference = ensemble_reference
    result = CliRunner().invoke(app, ["ensemble", members, "--out", str(reference), "-q"])
    assert result.exit_code == 2 and "already exists" in result.output and "--overwrite" in result.output


# ----------------------------------------------------------------------------- emseg objects, full disk


def test_objects_full_disk_names_the_table_and_leaves_no_table(tmp_path, monkeypatch):
    import pandas as pd

    labels = np.zeros((2, 32, 32), np.uint8)
    labels[:, 4:12, 4:12] = 1
    labels[:, 20:28, 18:30] = 2
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    write_csv = pd.DataFrame.to_csv

    def full_disk(self, path=None, *args, **kwargs):  # half the table reaches the disk, then ENOSPC
        write_csv(self.iloc[: max(1, len(self) // 2)], path, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    out = tmp_path / "tables"
    result = CliRunner().invoke(app, ["objects", str(tmp_path / "labels.tif"), "--out", str(out / "objects.parquet"),
                                      "--out", str(out / "objects.csv"), "--classes", "bg,a,b", "-q"])
    assert result.exit_code == 2, result.output
    assert f"could not write the table {out / 'objects.csv'}" in result.output
    assert "No space left on device" in result.output and "no table was written" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == []  # neither table, no temporary
    # with room on the disk the same command writes both tables
    monkeypatch.setattr(pd.DataFrame, "to_csv", write_csv)
    result = CliRunner().invoke(app, ["objects", str(tmp_path / "labels.tif"), "--out", str(out / "objects.parquet"),
                                      "--out", str(out / "objects.csv"), "--classes", "bg,a,b", "-q"])
    assert result.exit_code == 0, result.output
    # one box per class, connected across its two slices (3-D mode): two objects
    assert len(pd.read_csv(out / "objects.csv")) == len(pd.read_parquet(out / "objects.parquet")) == 2

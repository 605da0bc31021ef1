"""Faults during `emseg train`: kill -9 at any moment, Ctrl-C, a full disk (issue 16).

The killed runs are real `emseg train` processes. A resumed run must end with
the same model.pt, last.pt and metrics.jsonl (bar wall-clock times) as a run
that was never stopped: fp32, one thread, grid patch sampling (a sampler
state) and dropout (torch's random stream) make that a bit-for-bit check. The
training route is fixed (``route: fp32-t1``): the timing probe of ``route: auto``
may pick channels-last in one run and not in the other, which changes the last
bits of the convolutions (a resumed run keeps its recorded route: test_route.py).
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

import pytest
import torch

import emseg
from emseg.training import RunWriteError, TrainingInterrupted, load_checkpoint
from conftest import epfl_data_yaml

SRC = str(Path(emseg.__file__).resolve().parents[1])
EPOCHS = 5
TRAINING = (f"{{max_minutes: 30, epochs: {EPOCHS}, iterations_per_epoch: 6, batch_size: 2, patch_size: 64, "
            f"precision: fp32, num_threads: 1, route: fp32-t1, patch_sampling: {{mode: grid}}}}")

# Runs `emseg train ...` with torch.save wrapped to SIGKILL the process in the middle of one chosen
# checkpoint write (argv: FILE N emseg-arguments...): the N-th write of FILE goes to its temporary, is cut
# to half its size, and the process is killed, as a kill mid-write leaves it.
KILLER = """
import os, signal, sys
import torch
name, nth = sys.argv[1], int(sys.argv[2])
stem = name.rsplit(".", 1)[0]
real_save, calls = torch.save, [0]
def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if os.path.basename(str(f)).startswith("." + stem + ".tmp-"):
        calls[0] += 1
        if calls[0] == nth:
            size = os.path.getsize(f)
            with open(f, "r+b") as fh:
                fh.truncate(size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
from emseg.cli import main
sys.argv = ["emseg", *sys.argv[3:]]
main()
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from emseg.cli import main; main()", *args]


@pytest.fixture(scope="module")
def fault_config(tmp_path_factory, epfl_crop) -> Path:
    folder = tmp_path_factory.mktemp("faults")
    path = folder / "c.yaml"
    path.write_text(f"{epfl_data_yaml(epfl_crop)}model: {{name: unet2d, features: [4, 8], dropout: 0.2}}\n"
                    f"training: {TRAINING}\n")
    return path


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()  # the runs set training.num_threads: 1 in this process
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fault_config) -> Path:
    """The run never stopped."""
    threads = torch.get_num_threads()
    run = tmp_path_factory.mktemp("reference") / "run"
    emseg.train(fault_config, run, progress=False)
    torch.set_num_threads(threads)
    return run


def _records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("elapsed_s")
    return records


def _temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if ".tmp-" in p.name)


def _assert_same_run(run: Path, reference: Path) -> None:
    assert _records(run) == _records(reference)  # each epoch once, the same numbers
    assert [r["epoch"] for r in _records(run)] == list(range(1, EPOCHS + 1))
    for name in ("model.pt", "last.pt"):
        got, want = load_checkpoint(run / name), load_checkpoint(reference / name)
        assert got["training"]["epoch"] == want["training"]["epoch"]
        assert got["state"].keys() == want["state"].keys()
        assert all(torch.equal(got["state"][k], want["state"][k]) for k in want["state"]), name
    summary, expected = (json.loads((r / "summary.json").read_text()) for r in (run, reference))
    assert summary["best_epoch"] == expected["best_epoch"] and summary["epochs"] == EPOCHS
    assert _temporaries(run) == []


@pytest.mark.parametrize("lines", [1, 2, 3])
def test_kill_9_after_an_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, fault_config, reference, lines):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli("train", str(fault_config), "--out", str(run), "-q"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    try:
        while proc.poll() is None:  # kill as soon as the epoch's metrics line is there: before, during
            if metrics.is_file() and metrics.read_text().count("\n") >= lines:  # or after its checkpoints
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    assert not (run / "summary.json").exists()
    emseg.train(fault_config, run, resume=True, progress=False)
    _assert_same_run(run, reference)


def _improvements(reference: Path) -> int:
    """How many times the reference run wrote model.pt (epochs that beat the best validation mean IoU)."""
    best, count = -1.0, 0
    for record in _records(reference):
        if record["val_mean_iou"] is not None and record["val_mean_iou"] > best:
            best, count = record["val_mean_iou"], count + 1
    return count


def _kill_inside(run: Path, config: Path, name: str, nth: int) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLER, name, str(nth), "train", str(config), "--out", str(run),
                           "-q"], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(_temporaries(run)) == 1  # what a kill mid-write leaves


@pytest.mark.parametrize("name", ["last.pt", "model.pt"])
def test_kill_9_inside_a_checkpoint_write_then_resume_equals_an_uninterrupted_run(tmp_path, fault_config, reference,
                                                                                  name):
    run = tmp_path / "run"
    best_epoch = json.loads((reference / "summary.json").read_text())["best_epoch"]
    if name == "last.pt":  # epoch 3's: a truncated .last.tmp-* and a metrics line of an epoch never saved
        _kill_inside(run, fault_config, "last.pt", 3)
        assert len(_records(run)) == 3 and load_checkpoint(run / "last.pt")["training"]["epoch"] == 2
        assert load_checkpoint(run / "model.pt")["training"]["epoch"] <= 2  # never a truncated model.pt
    else:  # the best epoch's model.pt, after its last.pt: model.pt is one best behind, or absent
        _kill_inside(run, fault_config, "model.pt", _improvements(reference))
        last = load_checkpoint(run / "last.pt")["training"]
        assert last["epoch"] == last["best_epoch"] == best_epoch
        assert not (run / "model.pt").exists() or load_checkpoint(run / "model.pt")["training"]["epoch"] < best_epoch
    emseg.train(fault_config, run, resume=True, progress=False)
    _assert_same_run(run, reference)


def test_a_run_killed_in_its_first_checkpoint_starts_again(tmp_path, fault_config, reference, caplog):
    """--resume without a finished epoch starts from scratch; so does a plain rerun (no --overwrite needed)."""
    import shutil

    run = tmp_path / "run"
    _kill_inside(run, fault_config, "last.pt", 1)
    assert not (run / "last.pt").exists() and (run / "config.yaml").is_file()
    shutil.copytree(run, tmp_path / "rerun")
    emseg.train(fault_config, run, resume=True, progress=False)
    said = " ".join(caplog.text.split())
    assert "has no last.pt" in said and "starting the run from scratch" in said and "unfinished temporary" in said
    _assert_same_run(run, reference)
    caplog.clear()
    emseg.train(fault_config, tmp_path / "rerun", progress=False)
    said = " ".join(caplog.text.split())
    assert "never finished an epoch" in said and "unfinished temporary" in said
    _assert_same_run(tmp_path / "rerun", reference)


def test_ctrl_c_keeps_model_and_last_resumable_and_exits_130(tmp_path, fault_config, reference):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli("train", str(fault_config), "--out", str(run), "-q"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    while proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= 2:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.002)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    text = " ".join((out + err).split())
    assert "Traceback" not in text
    assert f"best model {run / 'model.pt'}" in text and f"{run / 'last.pt'}" in text and "--resume" in text
    assert not (run / "summary.json").exists() and _temporaries(run) == []
    last = load_checkpoint(run / "last.pt")["training"]
    best = load_checkpoint(run / "model.pt")["training"]
    assert last["epoch"] >= 1 and best["epoch"] == last["best_epoch"]
    emseg.train(fault_config, run, resume=True, progress=False)
    _assert_same_run(run, reference)


def test_ctrl_c_in_process_raises_training_interrupted(tmp_path, fault_config, monkeypatch):
    import emseg.training._checkpointing as checkpointing  # the metrics log callback writes through it

    real, calls = checkpointing.metrics_line, []

    def interrupt_in_epoch_3(path, record):
        real(path, record)
        calls.append(record["epoch"])
        if record["epoch"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpointing, "metrics_line", interrupt_in_epoch_3)
    with pytest.raises(TrainingInterrupted) as info:
        emseg.train(fault_config, tmp_path / "run", progress=False)
    stop = info.value
    assert stop.epochs == 2 and stop.model_path == tmp_path / "run" / "model.pt"  # epoch 3 was not saved
    assert load_checkpoint(stop.last_path)["training"]["epoch"] == 2
    assert load_checkpoint(stop.model_path)["training"]["epoch"] == stop.best_epoch


def _no_space(error: str):
    if error == "enospc":
        return OSError(errno.ENOSPC, "No space left on device")
    return RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                        "data/0: file write failed")


class _FullDiskFile:
    """A text file on a full disk: half of what is written lands, then ENOSPC."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, text):
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        raise _no_space("enospc")

    def flush(self):
        self.f.flush()


@pytest.mark.parametrize("failing, error, nth", [
    ("last.pt", "torch", 2),        # torch.save's own error, the second epoch's last.pt
    ("last.pt", "enospc", 2),
    ("model.pt", "enospc", 1),      # the first epoch's model.pt, after its last.pt
    ("metrics.jsonl", "enospc", 2), # the second epoch's metrics line, cut in half
])
def test_full_disk_names_the_file_and_leaves_no_temporaries(tmp_path, fault_config, monkeypatch, failing, error, nth):
    import builtins

    import emseg.training._run_dir as run_dir

    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        if Path(f).name.startswith(f".{failing.split('.')[0]}.tmp-"):
            calls["n"] += 1
            if calls["n"] == nth:
                with open(f, "wb") as fh:
                    fh.write(b"PK\x03\x04 half")  # what a full disk leaves of a file
                raise _no_space(error)
        return real_save(obj, f, *args, **kwargs)

    def open_full(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if failing == "metrics.jsonl" and mode == "a":
            calls["n"] += 1
            if calls["n"] == nth:
                return _FullDiskFile(f)
        return f

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(run_dir, "open", open_full, raising=False)
    run = tmp_path / "run"
    with pytest.raises(RunWriteError) as info:
        emseg.train(fault_config, run, progress=False)
    message = str(info.value)
    assert message.startswith("no space left") and str(run / failing) in message
    assert "free space or choose another --out" in message and "--resume" in message
    assert _temporaries(run) == [] and not (run / "summary.json").exists()
    lines = (run / "metrics.jsonl").read_text()
    assert lines.endswith("\n") and [r["epoch"] for r in _records(run)] == ([1, 2] if failing == "last.pt" else [1])
    assert load_checkpoint(run / "last.pt")["training"]["epoch"] == 1  # intact: the run can resume


def test_full_disk_on_the_command_line_is_one_message(tmp_path, fault_config, monkeypatch):
    from typer.testing import CliRunner

    from emseg.cli import app

    def no_space(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", no_space)
    result = CliRunner().invoke(app, ["train", str(fault_config), "--out", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"no space left writing {tmp_path / 'run' / 'last.pt'}" in " ".join(result.output.split())
    assert _temporaries(tmp_path / "run") == []

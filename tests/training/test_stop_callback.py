"""Stopping a run from outside: ``emseg.train(..., callbacks=[StopOnEvent(event)])`` ends it at the next step
with ``stop_reason == "cancelled"``, keeps the finished epochs resumable and writes no ``summary.json``."""

from __future__ import annotations

import json
import threading

import pytest
import torch

import emseg
from emseg.training import Callback, StopOnEvent, StopWhen, load_checkpoint
from conftest import epfl_data_yaml

STEPS = 2  # per epoch


@pytest.fixture
def config(tmp_path, epfl_crop):
    path = tmp_path / "c.yaml"  # a budget far above the run: the schedule follows the steps, not the clock
    path.write_text(f"{epfl_data_yaml(epfl_crop)}model: {{name: unet2d, features: [4, 8]}}\n"
                    f"training: {{max_minutes: 30, epochs: 3, iterations_per_epoch: {STEPS}, batch_size: 2, "
                    f"patch_size: 64, num_threads: 1}}\n")
    return path


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class _SetAfterStep(Callback):
    """Sets the event after the ``n``-th step, as a Cancel button pressed in the middle of an epoch would."""

    def __init__(self, event: threading.Event, n: int) -> None:
        self.event, self.n, self.seen = event, n, []

    def after_step(self, loop) -> None:
        self.seen.append(loop.state.iteration)
        if loop.state.iteration == self.n:
            self.event.set()


def _lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _numbers(run):
    return [{k: v for k, v in line.items() if k != "elapsed_s"} for line in _lines(run)]


def test_cancel_mid_epoch_keeps_the_finished_epoch_and_resumes_to_the_uninterrupted_run(tmp_path, config):
    reference = emseg.train(config, tmp_path / "reference", progress=False)
    assert reference.stop_reason == "epochs" and reference.complete

    stop = threading.Event()
    setter = _SetAfterStep(stop, STEPS + 1)  # the first step of epoch 2
    run = tmp_path / "run"
    result = emseg.train(config, run, progress=False, callbacks=[setter, StopOnEvent(stop)])
    assert result.stop_reason == "cancelled" and not result.complete
    assert result.epochs == 1 and result.best_epoch == 1
    assert setter.seen == [1, 2, 3]  # stopped before step 4: no step after the event was set
    assert not (run / "summary.json").exists()  # not a finished run: ensembles and sessions do not take it
    assert [r["epoch"] for r in _lines(run)] == [1]  # the dropped epoch 2 left no line
    assert load_checkpoint(run / "last.pt")["training"]["epoch"] == 1
    assert load_checkpoint(run / "model.pt")["training"]["epoch"] == 1

    resumed = emseg.train(config, run, resume=True, progress=False)
    assert resumed.stop_reason == "epochs" and resumed.epochs == 3
    assert _numbers(run) == _numbers(tmp_path / "reference")  # every epoch once, the same numbers
    got, want = load_checkpoint(run / "model.pt")["state"], load_checkpoint(reference.model_path)["state"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert json.loads((run / "summary.json").read_text())["stop_reason"] == "epochs"


def test_cancel_before_the_first_step_leaves_no_checkpoint(tmp_path, config):
    calls = []
    result = emseg.train(config, tmp_path / "run", progress=False,
                         callbacks=[StopWhen(lambda: calls.append(1) or True)])
    assert result.stop_reason == "cancelled" and result.epochs == 0 and result.best_epoch == 0
    assert calls == [1]
    assert not (tmp_path / "run" / "model.pt").exists() and not (tmp_path / "run" / "last.pt").exists()
    assert not (tmp_path / "run" / "summary.json").exists()


def test_callbacks_must_be_callbacks(tmp_path, config):
    with pytest.raises(ValueError, match="is not an emseg.training.Callback"):
        emseg.train(config, tmp_path / "run", progress=False, callbacks=[threading.Event()])
    with pytest.raises(ValueError, match="needs a threading.Event"):
        StopOnEvent(lambda: True)
    assert not (tmp_path / "run").exists()  # refused before anything was written

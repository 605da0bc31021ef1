"""Shared fixtures: small real crops from ../shared/data, written under tmp_path."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
EPFL = SHARED / "epfl-multiclass"
EPFL_CLASSES = ["background", "membrane", "mitochondrion", "mitochondrial_boundary", "vesicle", "psd", "axon"]

# Two cores: keep torch from oversubscribing when pytest runs next to other work.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# ``precision: auto`` follows the CPU (bf16 where it has AVX512-BF16/AMX, fp32 elsewhere). The suite must not
# depend on which CPU runs it, so by default every test sees a CPU *without* native bf16 (set before any
# fixture trains a model; subprocesses inherit it). The precision-sensitive tests take the ``cpu_bf16``
# fixture below and run once each way, so the bf16 code paths are tested on every machine (emulated bf16 on
# an AVX2-only CPU: those tests stay tiny). ``EMSEG_NATIVE_BF16=1 make test`` runs the whole suite the other way.
from emseg._device import NATIVE_BF16_ENV  # noqa: E402

os.environ.setdefault(NATIVE_BF16_ENV, "0")

# ``training.route: auto`` times candidate routes at the start of a run and takes the fastest: which one wins
# depends on the machine's load, and two routes (channels-last, threads) need not give the same bits. Tests
# compare runs bit for bit (resume = uninterrupted, kill and rerun), so the suite trains on the route
# ``precision: auto`` means, without the probe; tests/training/test_train_route.py turns the probe on.
os.environ.setdefault("EMSEG_TRAINING_PROBE", "0")


@pytest.fixture(params=[False, True], ids=["cpu-fp32", "cpu-bf16"])
def cpu_bf16(request, monkeypatch) -> bool:
    """Run the test as on a CPU without (False) and with (True) native bf16: ``precision: auto`` is fp32, then bf16."""
    monkeypatch.setenv(NATIVE_BF16_ENV, "1" if request.param else "0")
    return request.param


def auto_dtype(cpu_bf16: bool):
    """What ``precision: auto`` resolves to on the CPU under ``cpu_bf16`` (None: plain fp32)."""
    return torch.bfloat16 if cpu_bf16 else None


@pytest.fixture(autouse=True, scope="session")
def _wide_cli_consoles():
    """The CLI prints through rich, which wraps at 80 columns under CliRunner and so breaks long tmp
    paths inside the messages tests look for; a wide console keeps each message on one line."""
    from emseg.cli import _main

    for console in (_main.console, _main.err_console):
        console.width = 400


@pytest.fixture(autouse=True)
def _restore_cli_logging():
    """CLI commands invoked in-process configure the root logger (``force=True``) and the global quiet
    flag, as a command-line process should; restore both so no test depends on which CLI test ran last."""
    import logging

    from emseg import _progress

    root = logging.getLogger()
    handlers, level, quiet = root.handlers[:], root.level, _progress._QUIET
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    _progress.set_quiet(quiet)


def _write_crop(out: Path, folder: Path, crop: tuple) -> dict[str, Path]:
    """``crop`` of ``folder``'s train_raw.tif / train_labels.tif written as TIFF files under ``out``."""
    paths = {"raw": out / "raw.tif", "labels": out / "labels.tif"}
    for key, name in (("raw", "train_raw.tif"), ("labels", "train_labels.tif")):
        tifffile.imwrite(paths[key], tifffile.imread(folder / name)[crop], photometric="minisblack")
    return paths


def epfl_data_yaml(epfl_crop: dict[str, Path]) -> str:
    """The ``data:`` section of a config training on slices 0-2 of the EPFL crop and validating on slice 3."""
    return f"""data:
  train: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "0:3"}}
  val: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "3"}}
  classes: {EPFL_CLASSES}
"""


@pytest.fixture(scope="session")
def epfl_crop(tmp_path_factory) -> dict[str, Path]:
    """A 4 x 192 x 256 crop of the EPFL training volume and a 2-slice test crop, as TIFF files."""
    return _write_crop(tmp_path_factory.mktemp("epfl"), EPFL, np.s_[:4, 400:592, 160:416])


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def tiny_config(tmp_path, epfl_crop):
    """A valid config training a tiny U-Net for a few seconds on the EPFL crop."""
    text = f"""
data:
  train: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "0:3"}}
  val: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "3"}}
  classes: {EPFL_CLASSES}
model: {{name: unet2d, features: [4, 8]}}
training: {{max_minutes: 0.2, epochs: 2, iterations_per_epoch: 2, batch_size: 2, patch_size: 64}}
"""
    return write_config(tmp_path / "tiny.yaml", text)


def majority_iou(truth: np.ndarray, majority: int, num_classes: int) -> float:
    from emseg.evaluation import evaluate

    return evaluate(np.full_like(truth, majority), truth, classes=[str(i) for i in range(num_classes)]).mean_iou


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, epfl_crop):
    """A tiny U-Net trained for 2 epochs of 2 steps on the EPFL crop (a real run directory)."""
    import emseg

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = out / "c.yaml"
    cfg.write_text(f"""
data:
  train: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "0:3"}}
  val: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "3"}}
  classes: {EPFL_CLASSES}
model: {{name: unet2d, features: [4, 8]}}
training: {{max_minutes: 0.5, epochs: 2, iterations_per_epoch: 2, batch_size: 2, patch_size: 64}}
""")
    return emseg.train(cfg, out / "run", progress=False)


ISBI = SHARED / "isbi2012-membranes"


@pytest.fixture(scope="session")
def isbi_crop(tmp_path_factory) -> dict[str, Path]:
    """An 8 x 96 x 96 crop of the contiguous anisotropic ISBI 2012 stack (0 interior, 1 membrane), as TIFF files."""
    return _write_crop(tmp_path_factory.mktemp("isbi"), ISBI, np.s_[:8, 100:196, 100:196])


# --- issue 5: a tiny benchmark (2 tiny U-Nets x 1 loss + a small random forest + 3 ensembles) ---
def write_bench(folder, epfl_crop, *, extra: str = "") -> Path:
    test_raw = tifffile.imread(EPFL / "test_raw.tif")[:2, 300:428, 300:460]
    test_lab = tifffile.imread(EPFL / "test_labels.tif")[:2, 300:428, 300:460]
    tifffile.imwrite(folder / "test_raw.tif", test_raw)
    tifffile.imwrite(folder / "test_labels.tif", test_lab)
    tifffile.imwrite(folder / "test_labels_b.tif", np.roll(test_lab, 1, axis=2))  # a "second annotator", 1 px off
    path = folder / "bench.yaml"
    path.write_text(f"""
title: tiny benchmark
dataset:
  train: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "0:3"}}
  val: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "3"}}
  test: {{image: test_raw.tif, labels: test_labels.tif}}
  second_annotation: test_labels_b.tif
classes: {EPFL_CLASSES}
models:
  - {{name: unet2d, label: unet-a, features: [4, 8]}}
  - {{name: unet2d, label: unet-b, features: [4, 8], act: prelu, dropout: 0.1}}
  - {{name: random-forest, n_estimators: 4, sigmas: [1.0, 3.0], samples_per_class: 200}}
losses:
  - {{name: dice-ce, training: {{dice_weight: 1, ce_weight: 1}}}}
seeds: [0]
budget: {{minutes: 0.3, device: auto}}
training: {{epochs: 2, iterations_per_epoch: 2, batch_size: 2, patch_size: 64, num_threads: 1}}
evaluation: {{subsets: {{org: [mitochondrion, vesicle]}}}}
overlays: {{slices: [0, 1], width: 80}}
ensembles:
  - {{method: mean}}
  - {{method: weighted, members: top2}}
  - {{method: vote}}
{extra}
""")
    return path


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory, epfl_crop):
    """``(bench.yaml, out dir, results)`` of a finished tiny benchmark."""
    from emseg.benchmark import run_benchmark

    folder = tmp_path_factory.mktemp("bench")
    bench = write_bench(folder, epfl_crop)
    out = folder / "out"
    results = run_benchmark(bench, out, progress=False)
    return bench, out, results


def tiny_ensemble_config(epfl_crop, *, val: bool = True, features=(4, 8)) -> str:
    """YAML of a tiny U-Net on the EPFL crop (tests/ensemble); ``val=False``: train on all 4 slices, no data.val."""
    val_line = f"  val: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: \"3\"}}\n" if val else ""
    return f"""
data:
  train: {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "{'0:3' if val else '0:4'}"}}
{val_line}  classes: {EPFL_CLASSES}
model: {{name: unet2d, features: {list(features)}}}
training: {{max_minutes: 1, epochs: 1, iterations_per_epoch: 2, batch_size: 2, patch_size: 64}}
"""


@pytest.fixture(scope="session")
def seed_runs(tmp_path_factory, epfl_crop):
    """``emseg.ensemble.train_seeds`` with seeds 0 and 1 of a tiny U-Net: (config path, SeedsResult)."""
    from emseg.ensemble import train_seeds

    out = tmp_path_factory.mktemp("seeds")
    cfg = out / "c.yaml"
    cfg.write_text(tiny_ensemble_config(epfl_crop))
    return cfg, train_seeds(cfg, out / "seeds", seeds=[0, 1], progress=False)


@pytest.fixture
def one_torch_thread():
    """The blockwise engine computes with one intra-op thread (bit-identical routes); so do the references."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sigkill_when(proc, ready, *, timeout: float = 120.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled every 2 ms); fail if it ends first."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.002)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert ready(), "the moment to kill never came"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


# --- tests/napari: headless napari --------------------------------------------------------------------
# Qt's offscreen platform (set for these tests only) on an X display for OpenGL: napari draws with OpenGL;
# Qt's offscreen platform gets an OpenGL context from the X display pytest-xvfb starts (Debian's ``xvfb``,
# installed by scripts/test-system-deps with the Qt libraries). The plugin's manifest is registered from
# the source tree when the installed emseg does not provide it (a checkout run with PYTHONPATH=src).
# (Here, not in tests/napari/conftest.py: pytest imports every conftest.py as the module ``conftest``,
# and the suite's test modules import their constants from this one.)

_GL_CHECK = """
import os
from qtpy.QtWidgets import QApplication
app = QApplication([])
from vispy.app import Canvas
from vispy.gloo import gl
canvas = Canvas(show=False)
print('GL-OK' if gl.glGetParameter(gl.GL_EXTENSIONS) else 'GL-NONE')
"""


def _opengl_works() -> bool:
    import subprocess
    import sys

    try:
        out = subprocess.run([sys.executable, "-c", _GL_CHECK], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False
    return "GL-OK" in out.stdout


_CHECKED: list[bool] = []
_DISPLAYS: list = []


def pytest_collection_modifyitems(config, items):
    """Before the first napari test: an X display whose GLX gives napari an OpenGL context.

    Rarely, on this shared machine, pytest-xvfb's display gave no GL context for a whole session (every
    viewer failed); then a private Xvfb (24-bit) is started for these tests instead.
    """
    if _CHECKED or not any(_is_napari_test(item.path) for item in items):
        return
    _CHECKED.append(True)
    # Qt's offscreen platform, for these tests only, before pytest-qt / napari create the QApplication
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    if os.environ.get("DISPLAY") and _opengl_works():
        return
    try:
        from pyvirtualdisplay import Display

        display = Display(backend="xvfb", size=(1280, 1024), color_depth=24, extra_args=["-nolisten", "tcp"])
        display.start()
        _DISPLAYS.append(display)
        os.environ["DISPLAY"] = display.new_display_var
    except Exception:  # noqa: BLE001 - reported below
        pass
    if not (os.environ.get("DISPLAY") and _opengl_works()):
        raise pytest.UsageError("tests/napari need an X display with OpenGL (Qt runs offscreen on it): install "
                                "Debian's xvfb and Mesa (bash scripts/test-system-deps) so pytest-xvfb can start one")


def pytest_unconfigure(config):
    for display in _DISPLAYS:
        display.stop()


def _is_napari_test(path) -> bool:
    return "napari" in Path(path).parts


@pytest.fixture(autouse=True)
def emseg_plugin(request):
    """tests/napari: the emseg npe2 manifest, registered with napari's plugin manager (once)."""
    if not _is_napari_test(request.node.path):
        return None
    from npe2 import PluginManager, PluginManifest

    import emseg.napari

    pm = PluginManager.instance()
    ours = Path(emseg.napari.__file__).parent / "napari.yaml"
    try:
        pm.get_manifest("emseg")
    except KeyError:
        pm.register(PluginManifest.from_file(ours))
    return pm.get_manifest("emseg")


def pytest_configure(config):
    # napari on a Qt5 binding: theme detection needs Qt6 (harmless here)
    config.addinivalue_line("filterwarnings", "ignore:System theme detection requires a Qt6 backend:UserWarning")

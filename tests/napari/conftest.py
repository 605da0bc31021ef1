"""Headless napari: Qt's offscreen platform (set here, for these tests only) on an X display for OpenGL.

napari draws with OpenGL; Qt's offscreen platform gets an OpenGL context from the X display pytest-xvfb
starts (Debian's ``xvfb``, installed by scripts/test-system-deps with the Qt libraries). The plugin's
manifest is registered from the source tree when the installed emseg does not provide it (a checkout run
with PYTHONPATH=src).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before pytest-qt / napari create the QApplication

MANIFEST = Path(__file__).resolve().parents[2] / "src" / "emseg" / "napari" / "napari.yaml"


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
    if _CHECKED or not any("tests/napari" in str(item.fspath) for item in items):
        return
    _CHECKED.append(True)
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


@pytest.fixture(autouse=True)
def emseg_plugin():
    """The emseg npe2 manifest, registered with napari's plugin manager (once)."""
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

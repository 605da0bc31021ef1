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


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("DISPLAY") and any("tests/napari" in str(item.fspath) for item in items):
        raise pytest.UsageError("tests/napari need an X display for OpenGL (Qt runs offscreen on it): install "
                                "Debian's xvfb (bash scripts/test-system-deps) so pytest-xvfb can start one")


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

"""The plugin's packaging: the npe2 manifest behind the `napari.manifest` entry point; emseg without Qt."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_entry_point_validates_and_its_commands_import():
    from npe2 import PluginManifest

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["napari.manifest"]["emseg"]
    package, _, filename = target.partition(":")
    manifest = PluginManifest.from_file(ROOT / "src" / Path(*package.split(".")) / filename)
    assert manifest.name == "emseg"
    assert {"napari", "magicgui"} <= {dep.split(">")[0].split("=")[0] for dep in project["optional-dependencies"]["napari"]}
    commands = manifest.contributions.commands
    assert len(commands) >= 4  # reader + the three widgets
    for command in commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.python_name


def test_importing_emseg_and_its_cli_never_imports_qt():
    code = ("import sys, emseg, emseg.cli, emseg.active, emseg.napari, emseg.napari._reader\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'magicgui', 'vispy'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout

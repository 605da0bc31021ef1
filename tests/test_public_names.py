"""Every name a package lists in ``__all__`` can be imported from it (the public API of each layer)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import emseg

PACKAGES = sorted(
    info.name for info in pkgutil.iter_modules(emseg.__path__, "emseg.")
    if info.ispkg and info.name != "emseg.napari"  # the napari plugin imports Qt: tests/napari covers it
)


@pytest.mark.parametrize("name", PACKAGES)
def test_every_name_in_all_is_importable(name):
    module = importlib.import_module(name)
    missing = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names it does not provide: {missing}"

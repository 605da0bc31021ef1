"""Optional third-party packages, imported when first needed, with the pip command that installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, what: str, extra: str) -> ModuleType:
    """``import module``, or a RuntimeError saying that ``what`` needs it and that ``extra`` installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeError(f"{what} needs the Python package {module!r}, which is not installed: "
                           f"run {extra}") from None

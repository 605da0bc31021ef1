"""The ``emseg`` command: thin wrappers over the library."""

from emseg.cli._main import app, main

__all__ = ["app", "main"]

"""The ``emseg`` command: thin wrappers over the library."""

from emseg.cli._main import _register_subcommands, app, main

_register_subcommands()

__all__ = ["app", "main"]

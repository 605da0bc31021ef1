"""The package version (a module of its own at the bottom of the layers: importing it imports nothing)."""

__version__ = "0.1.0"

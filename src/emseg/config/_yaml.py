"""Reading YAML files and merging nested mappings (configurations, presets, overrides)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from emseg.config._schema import ConfigError

__all__ = ["deep_merge", "read_yaml"]


def read_yaml(path: str | os.PathLike, *, what: str) -> Any:
    """The content of a YAML file (``{}`` when empty).

    Raises:
        ConfigError: the file is missing (``"<what> not found: PATH"``) or not valid YAML.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None


def deep_merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, recursively for nested mappings (neither is modified)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out

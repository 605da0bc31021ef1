"""Loading a configuration: YAML file, overrides and preset merged, then validated once, with messages
that name the key, the problem and the allowed values."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from emseg._registry import suggest
from emseg.config._recipes import apply_recipe
from emseg.config._schema import Config, ConfigError
from emseg.config._yaml import deep_merge, read_yaml

__all__ = ["config_from_dict", "format_errors", "load_config"]


def format_errors(err: ValidationError, source: str, *, root: type[BaseModel] = Config,
                  what: str = "configuration") -> str:
    """The message of a failed validation of a ``root`` document: one line per error, naming the key,
    with the allowed keys (and the nearest one) for an unknown key."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not isinstance(p, int) or True)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            key = str(e["loc"][-1])
            parent = _model_at(e["loc"][:-1], root)
            allowed = list(parent.model_fields) if parent else []
            msg = f"unknown key.{suggest(key, allowed)} Allowed here: {', '.join(allowed)}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {loc or '(top level)'}: {msg}")
    return f"invalid {what} {source}:\n" + "\n".join(lines)


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        ann = field.annotation
        for candidate in getattr(ann, "__args__", (ann,)):
            inner = getattr(candidate, "__args__", (candidate,))
            found = [c for c in (candidate, *inner) if isinstance(c, type) and issubclass(c, BaseModel)]
            if found:
                model = found[0]
                break
        else:
            return None
    return model


def config_from_dict(data: dict[str, Any], *, base_dir: str | os.PathLike | None = None, source: str = "") -> Config:
    """Validate a configuration dictionary; relative paths resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration {source}: expected a mapping with keys data, model, training")
    try:
        return Config.model_validate(data, context={"base_dir": None if base_dir is None else str(base_dir)})
    except ValidationError as err:
        raise ConfigError(format_errors(err, source)) from None


def load_config(path: str | os.PathLike, *, overrides: dict[str, Any] | None = None,
                recipe: str | None = None) -> Config:
    """Load and validate a YAML configuration file.

    Args:
        path: the YAML file.
        overrides: nested mapping merged over the file's content (e.g. from CLI flags).
        recipe: name of a training preset (``emseg recipes``) merged *under* the
            file: the file's keys win.

    Raises:
        ConfigError: unreadable YAML, unknown keys, wrong types, missing files.
    """
    path = Path(path)
    data = read_yaml(path, what="configuration file")
    if overrides:
        data = deep_merge(data, overrides)
    if recipe is not None:
        data = apply_recipe(recipe, data)
    config = config_from_dict(data, base_dir=path.resolve().parent, source=f"in {path}")
    config._source = str(path)
    return config

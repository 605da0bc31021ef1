"""Named training presets (``emseg recipes``), merged *under* a user configuration.

A preset is a YAML file in ``emseg/config/recipes/`` holding ordinary config
sections (``model``, ``training``, ``preprocess``) plus a ``recipe`` block with
its description and model requirements:

* ``requires_model: NAME``: the preset needs this model; if it is not
  registered and the user's configuration does not choose a model, an error
  names it.
* ``prefers_model: NAME``: used when registered; otherwise the user's (or the
  default) model is kept and a warning says so.

The user's keys always win; when the user picks another model than the
preset's, the preset's model options are dropped (they belong to that model).
"""

from __future__ import annotations

import copy
import logging
from importlib import resources
from typing import Any

import yaml

from emseg._registry import suggest
from emseg.config._yaml import deep_merge
from emseg.models import MODELS

logger = logging.getLogger(__name__)

__all__ = ["apply_recipe", "list_recipes", "load_recipe", "recipe_files"]


def recipe_files() -> dict[str, Any]:
    folder = resources.files("emseg.config") / "recipes"
    return {entry.name.removesuffix(".yaml"): entry for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".yaml")}


def list_recipes() -> dict[str, str]:
    """Preset name -> one-line description."""
    return {name: load_recipe(name)["recipe"].get("description", "") for name in recipe_files()}


def load_recipe(name: str) -> dict[str, Any]:
    """The preset's raw content (with its ``recipe`` block)."""
    files = recipe_files()
    if name not in files:
        raise ValueError(f"unknown recipe {name!r}.{suggest(name, list(files))} Available: {', '.join(files)}")
    return yaml.safe_load(files[name].read_text()) or {}


def apply_recipe(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Return ``config`` merged over preset ``name`` (the config's keys win).

    Raises:
        ValueError: unknown preset (with a suggestion), or a preset that
            requires a model that is not registered.
    """
    preset = copy.deepcopy(load_recipe(name))
    meta = preset.pop("recipe", {}) or {}
    user_model = (config.get("model") or {}).get("name") if isinstance(config.get("model"), dict) else None
    preset_model = (preset.get("model") or {}).get("name")
    if user_model is not None and preset_model is not None and user_model != preset_model:
        preset.pop("model")  # the user's model: the preset's options belong to another network
        logger.info("recipe %s: using model %r from the configuration instead of %r", name, user_model, preset_model)
    elif preset_model is not None and preset_model not in MODELS:
        if meta.get("requires_model") == preset_model:
            raise ValueError(
                f"recipe {name!r} needs model {preset_model!r}, which is not registered in this emseg "
                f"(available: {', '.join(MODELS.names())}); choose a model in the configuration's model.name"
            )
        fallback = user_model or "unet2d"
        logger.warning("recipe %s: model %r is not available; keeping %r", name, preset_model, fallback)
        preset.pop("model")
    return deep_merge(preset, config)

"""Typed configuration: a YAML file validated once, at the edge, by pydantic; and the training presets.

Example (``train.yaml``)::

    data:
      train: {image: raw.tif, labels: labels.tif, slices: "0:24"}
      val: {image: raw.tif, labels: labels.tif, slices: "24:30"}
      classes: [background, membrane, mitochondrion]
      ignore_label: 255
    model: {name: unet2d, dropout: 0.5}
    training: {max_minutes: 20, seed: 0}

Relative paths resolve against the folder holding the config file.  Unknown
keys, wrong types and missing files raise :class:`ConfigError` naming the key.
Presets (``emseg recipes``, YAML files in ``emseg/config/recipes/``) merge *under*
a configuration.

Modules: ``_schema`` (the pydantic models), ``_load`` (load and validate, error
messages), ``_yaml`` (read YAML, merge mappings), ``_recipes`` (presets),
``_checks`` (cross-field checks that build the loss).
"""

from emseg.config._load import config_from_dict, format_errors, load_config
from emseg.config._recipes import apply_recipe, list_recipes, load_recipe, recipe_files
from emseg.config._schema import (
    AugmentConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    PreprocessConfig,
    TrainingConfig,
    VolumeSource,
    resolve_config_path,
)
from emseg.config._yaml import deep_merge, read_yaml

__all__ = [
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "PreprocessConfig",
    "TrainingConfig",
    "VolumeSource",
    "apply_recipe",
    "config_from_dict",
    "deep_merge",
    "format_errors",
    "list_recipes",
    "load_config",
    "load_recipe",
    "read_yaml",
    "recipe_files",
    "resolve_config_path",
]

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

# The public names, listed once in each module's __all__ (imported here by name for readers and IDEs).
from emseg.config import _load, _recipes, _schema, _yaml
from emseg.config._load import config_from_dict, format_errors, load_config
from emseg.config._recipes import apply_recipe, list_recipes, load_recipe, recipe_files
from emseg.config._schema import AugmentConfig, Config, ConfigError, DataConfig, ModelConfig, PreprocessConfig
from emseg.config._schema import SemiSupervisedConfig, TrainingConfig, UnlabelledSource, VolumeSource, parse_route
from emseg.config._schema import RootConfig, resolve_config_path
from emseg.config._yaml import deep_merge, read_yaml

__all__ = sorted([*_schema.__all__, *_load.__all__, *_recipes.__all__, *_yaml.__all__])

"""Named presets: each validates, config keys win, unknown names get a suggestion; CLI commands."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from emseg.cli import app
from emseg.config import ConfigError, load_config
from emseg.data import guay_weight_map
from emseg.models import MODELS
from emseg.config import apply_recipe, list_recipes, load_recipe
from conftest import EPFL_CLASSES, epfl_data_yaml

runner = CliRunner()


def _write(tmp_path, epfl_crop, extra: str = "") -> object:
    path = tmp_path / "c.yaml"
    path.write_text(f"""
{epfl_data_yaml(epfl_crop)}{extra}
""")
    return path


def test_the_four_presets_exist():
    assert set(list_recipes()) == {"wae-net", "densecell-2d3d", "fibsem-meyer", "em-stellar"}
    assert all(list_recipes().values())


@pytest.mark.parametrize("name", ["wae-net", "densecell-2d3d", "fibsem-meyer", "em-stellar"])
def test_every_preset_validates(name, tmp_path, epfl_crop):
    # presets that need a model this branch may lack are checked with unet2d chosen by the config
    needs = load_recipe(name)["recipe"].get("requires_model")
    extra = "model: {name: unet2d, features: [4, 8]}" if needs and needs not in MODELS else ""
    cfg = load_config(_write(tmp_path, epfl_crop, extra), recipe=name)
    preset = load_recipe(name)["training"]
    for key, value in preset.items():
        if key not in ("augment", "weight_map", "patch_sampling", "abandon_below"):
            assert getattr(cfg.training, key) == value, key


def test_config_keys_override_the_preset(tmp_path, epfl_crop):
    cfg = load_config(_write(tmp_path, epfl_crop, "training: {learning_rate: 0.01, augment: {rot90: false}}"),
                      recipe="wae-net")
    assert cfg.training.learning_rate == 0.01  # the config's
    assert cfg.training.augment.rot90 is False  # the config's, inside a nested section
    assert cfg.training.augment.grid_distortion == 0.3  # the preset's, same section
    assert cfg.training.lr_schedule == "plateau" and cfg.training.plateau_factor == 0.25
    assert set(cfg.training.loss) == {"focal", "dice"}
    meyer = load_config(_write(tmp_path, epfl_crop, "model: {features: [4, 8]}"), recipe="fibsem-meyer")
    assert meyer.model.options == {"norm": "batch", "dropout": 0.5, "features": [4, 8]}
    assert meyer.training.patch_sampling.mode == "labelled" and meyer.training.patch_sampling.labelled_fraction == 0.8


def test_missing_models(tmp_path, epfl_crop, caplog):
    if "unet-resnet34" not in MODELS:
        with caplog.at_level(logging.WARNING):
            cfg = load_config(_write(tmp_path, epfl_crop), recipe="wae-net")
        assert cfg.model.name == "unet2d" and "unet-resnet34" in caplog.text
    if "hybrid2d3d" not in MODELS:
        with pytest.raises(ValueError, match="needs model 'hybrid2d3d'"):
            load_config(_write(tmp_path, epfl_crop), recipe="densecell-2d3d")
    # a model chosen in the config replaces the preset's, and the preset's model options are dropped
    data = apply_recipe("fibsem-meyer", {"model": {"name": "random-forest"}})
    assert data["model"] == {"name": "random-forest"}


def test_unknown_recipe_suggests():
    with pytest.raises(ValueError, match="Did you mean 'em-stellar'"):
        load_recipe("em-stelar")


def test_cli_recipes_and_train_with_recipe(tmp_path, epfl_crop):
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0 and "fibsem-meyer" in result.output and "wae-net" in result.output
    result = runner.invoke(app, ["recipes", "--show", "em-stellar"])
    assert result.exit_code == 0 and "radam" in result.output
    result = runner.invoke(app, ["recipes", "--show", "wae"])
    assert result.exit_code == 2
    cfg = _write(tmp_path, epfl_crop, "model: {name: unet2d, features: [4, 8]}\n"
                 "training: {max_minutes: 0.5, epochs: 2, iterations_per_epoch: 2, batch_size: 2, patch_size: 32}")
    result = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run"), "--recipe", "em-stellar", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "radam" in (tmp_path / "run" / "config.yaml").read_text()
    result = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run2"), "--recipe", "stellar"])
    assert result.exit_code == 2 and "Did you mean 'em-stellar'" in result.output


def test_cli_weights_writes_the_map(tmp_path, epfl_crop):
    cfg = _write(tmp_path, epfl_crop, "training:\n  weight_map: {kind: guay, w0: 1.0, edge_terms: "
                 "[{source: [1], target: [0, 2], alpha: 2.0, c: 0.1, sigma: 2.0}]}")
    out = tmp_path / "w.tif"
    result = runner.invoke(app, ["weights", str(cfg), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    written = tifffile.imread(out)
    labels = tifffile.imread(epfl_crop["labels"])
    assert written.dtype == np.float32 and written.shape == labels.shape
    # class balance from the 3 training slices, edge terms over the whole volume
    train = labels[:3].astype(np.int64)
    counts = np.bincount(train.ravel(), minlength=7)
    balance = np.where(counts > 0, counts[counts > 0].min() / np.maximum(counts, 1), 0.0)
    expected = guay_weight_map(labels.astype(np.int64), num_classes=7, w0=1.0, balance_weights=balance,
                               edge_terms=[{"source": [1], "target": [0, 2], "alpha": 2.0, "c": 0.1, "sigma": 2.0}])
    np.testing.assert_allclose(written, expected, rtol=1e-6)
    assert written.min() >= 1.0 and written.max() <= 1.0 + 1.0 + 2.0 + 1e-6
    result = runner.invoke(app, ["weights", str(cfg), "--out", str(out)])
    assert result.exit_code == 2 and "overwrite" in result.output
    plain = _write(tmp_path, epfl_crop)
    result = runner.invoke(app, ["weights", str(plain), "--out", str(tmp_path / "x.tif")])
    assert result.exit_code == 2 and "weight_map" in result.output

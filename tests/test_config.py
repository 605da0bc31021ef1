"""Configuration: valid files load, every kind of mistake names the key and the fix."""

from __future__ import annotations

import pytest

from emseg.config import ConfigError, load_config
from emseg.data import parse_slices

from conftest import EPFL_CLASSES


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_valid_config_resolves_relative_paths(tmp_path, epfl_crop):
    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "raw.tif").symlink_to(epfl_crop["raw"])
    (sub / "lab.tif").symlink_to(epfl_crop["labels"])
    cfg = load_config(_write(sub, f"""
data:
  train: {{image: raw.tif, labels: lab.tif, slices: "0:2"}}
  classes: {EPFL_CLASSES}
  ignore_label: 255
model: {{name: unet2d, dropout: 0.5}}
training: {{max_minutes: 20, seed: 3}}
"""))
    assert cfg.data.train[0].image == str(sub / "raw.tif")
    assert cfg.data.ignore_label == 255
    assert cfg.model.options == {"dropout": 0.5}
    assert cfg.training.seed == 3 and cfg.training.max_minutes == 20


def test_list_of_training_pairs(tmp_path, epfl_crop):
    cfg = load_config(_write(tmp_path, f"""
data:
  train:
    - {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: "0:2"}}
    - {{image: {epfl_crop['raw']}, labels: {epfl_crop['labels']}, slices: [3]}}
  classes: [a, b]
"""))
    assert len(cfg.data.train) == 2 and cfg.data.train[1].slices == "3"


@pytest.mark.parametrize(
    "snippet, expected",
    [
        ("data: {{train: {{image: {raw}, labels: {lab}}}, classes: [a, b], clases: [a]}}", ["data.clases", "Did you mean 'classes'"]),
        ("data: {{train: {{image: {raw}, labels: {lab}}}, classes: [a, b]}}\ntraining: {{max_minutes: soon}}", ["training.max_minutes", "valid number"]),
        ("data: {{train: {{image: {raw}, labels: {lab}}}, classes: [a, b]}}\nmodel: {{name: unet2D}}", ["unknown model 'unet2D'", "unet2d"]),
        ("data: {{train: {{image: missing.tif, labels: {lab}}}, classes: [a, b]}}", ["data.train.0.image", "file not found", "missing.tif"]),
        ("data: {{train: {{image: {raw}, labels: {lab}}}}}", ["data.classes", "required key is missing"]),
        ("data: {{train: {{image: {raw}, labels: {lab}}}, classes: [a, b], ignore_label: 1}}", ["ignore_label 1", "class 'b'"]),
        ("data: {{train: {{image: {raw}, labels: {lab}}}, classes: [a, b]}}\nmodel: {{name: unet2d, dropuot: 0.5}}", ["dropuot", "Allowed keys"]),
        ("data: {{train: {{image: {raw}, labels: {lab}}}, classes: [a, b]}}\ntraining: {{class_weights: [1, 2, 3]}}", ["class_weights has 3 values", "2 classes"]),
        ("data: {{train: {{image: {raw}, labels: {lab}}}, classes: [a, b]}}\ntraining: {{class_weights: median}}", ["training.class_weights", "'auto' or 'rare'"]),
    ],
)
def test_config_errors_name_the_key(tmp_path, epfl_crop, snippet, expected):
    path = _write(tmp_path, snippet.format(raw=epfl_crop["raw"], lab=epfl_crop["labels"]))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "data: [unclosed"))


@pytest.mark.parametrize(
    "text, depth, expected",
    [("0:3", 5, [0, 1, 2]), ("3", 5, [3]), ("0,4", 5, [0, 4]), ("0:2,3:5", 6, [0, 1, 3, 4]), (None, 3, [0, 1, 2]), ("2:", 4, [2, 3])],
)
def test_parse_slices(text, depth, expected):
    assert parse_slices(text, depth) == expected


@pytest.mark.parametrize("text, match", [("0:10", "has 5 slices"), ("a:b", "cannot parse"), ("3:3", "selects no slices")])
def test_parse_slices_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_slices(text, 5)


def _recipe_cfg(tmp_path, epfl_crop, training: dict | None = None, **top):
    from emseg.config import config_from_dict

    return config_from_dict({
        "data": {"train": {"image": str(epfl_crop["raw"]), "labels": str(epfl_crop["labels"])}, "classes": ["a", "b", "c"]},
        "training": training or {}, **top})


def test_recipe_keys_defaults_keep_todays_behaviour(tmp_path, epfl_crop):
    cfg = _recipe_cfg(tmp_path, epfl_crop)
    tc = cfg.training
    assert (tc.loss, tc.weight_map, tc.optimizer, tc.lr_schedule, tc.warmup_fraction) == (None, None, "adam", "cosine", 0.0)
    assert tc.checkpoint_metric == "val_mean_iou" and tc.early_stopping_patience is None and tc.abandon_below is None
    assert tc.patch_sampling.mode == "foreground" and cfg.preprocess.grain_filter == []
    assert _recipe_cfg(tmp_path, epfl_crop, {"loss": "focal"}).training.loss == {"focal": 1.0}
    assert _recipe_cfg(tmp_path, epfl_crop, {"loss": ["focal", "dice"]}).training.loss == {"focal": 1.0, "dice": 1.0}


@pytest.mark.parametrize("training, top, message", [
    ({"optimizer": "adamw"}, {}, "training.optimizer"),
    ({"lr_schedule": "step"}, {}, "training.lr_schedule"),
    ({"checkpoint_metric": "val_iou"}, {}, "training.checkpoint_metric"),
    ({"augment": {"rotaton": 10}}, {}, "Did you mean 'rotation'"),
    ({"augment": {"elastic": "yes"}}, {}, "training.augment.elastic"),
    ({"patch_sampling": {"mode": "grid", "spacing": [0, 4]}}, {}, "spacing must be >= 1"),
    ({"patch_sampling": {"labeled_fraction": 0.5}}, {}, "Did you mean 'labelled_fraction'"),
    ({"abandon_below": {"epochs": 3, "score": 1.5}}, {}, "training.abandon_below.score"),
    ({"weight_map": {"kind": "gauy"}}, {}, "training.weight_map.kind"),
    ({"weight_map": {"kind": "unet_border", "edge_terms": [{"source": 1, "target": 0}]}}, {}, "edge_terms belong"),
    ({"nesterov": True}, {}, "nesterov applies to optimizer 'sgd'"),
    ({"warmup_fraction": 1.0}, {}, "training.warmup_fraction"),
    ({}, {"preprocess": {"grain_filter": [0]}}, "grain_filter areas must be >= 1"),
    ({}, {"preprocess": {"grain_filtre": [10]}}, "Did you mean 'grain_filter'"),
])
def test_recipe_keys_are_validated(tmp_path, epfl_crop, training, top, message):
    with pytest.raises(ConfigError, match=message):
        _recipe_cfg(tmp_path, epfl_crop, training, **top)

"""Training 3-D, multi-head and valid-padding models on a real anisotropic ISBI crop, and their checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

import emseg
from emseg.config import AugmentConfig, ConfigError, config_from_dict
from emseg.data import IGNORE_INDEX, DataError, VolumePatchSampler, augment_volume_batch, load_training_volumes
from emseg.inference import Predictor
from emseg.models import build_model
from emseg.training import DiceCELoss, load_checkpoint
from emseg.training._spatial import match_target, resolve_patch_size, with_aux_heads

TINY = {
    "hybrid2d3d": {"features": [4, 8], "features_3d": 4},
    "unet3d-thin": {"features": [4, 8]},
    "unet3d-thick": {"features": [4, 8]},
    "unet-original": {"features": [4, 8]},
}


def _config(isbi_crop, name, *, train="0:6", val="6:8", patch=None, **model):
    data = {"train": {"image": str(isbi_crop["raw"]), "labels": str(isbi_crop["labels"]), "slices": train},
            "classes": ["interior", "membrane"]}
    if val is not None:
        data["val"] = {"image": str(isbi_crop["raw"]), "labels": str(isbi_crop["labels"]), "slices": val}
    training = {"max_minutes": 0.5, "epochs": 2, "iterations_per_epoch": 1, "batch_size": 1}
    if patch is not None:
        training["patch_size"] = patch
    return config_from_dict({"data": data, "model": {"name": name, **model}, "training": training})


@pytest.mark.parametrize("name", list(TINY))
def test_train_checkpoint_predict(isbi_crop, tmp_path, name):
    patch = [3, 32, 32] if name != "unet-original" else 40
    config = _config(isbi_crop, name, patch=patch, **TINY[name])
    run = emseg.train(config, tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(np.isfinite(line["train_loss"]) and 0 <= line["val_mean_iou"] <= 1 for line in lines)
    ckpt = load_checkpoint(run.run_dir)
    inference = ckpt["inference"]
    raw = tifffile.imread(isbi_crop["raw"])
    if name == "unet-original":
        assert inference["spatial_dims"] == 2 and inference["margin"] == 8
        assert inference["window"] == [404, 404]  # 388 + 2 * 8 = 404 is valid for depth 1
    else:
        # the training patch's z; y and x at least 256 (fewer windows to compute)
        assert inference["spatial_dims"] == 3 and inference["window_3d"] == [3, 256, 256]
    predictor = Predictor.from_checkpoint(run.run_dir)
    labels, probs = predictor.predict_volume(raw, probabilities=True)
    assert labels.shape == raw.shape and probs.shape == (2, *raw.shape)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    out = emseg.predict(run.run_dir, isbi_crop["raw"], tmp_path / "labels.tif", progress=False)
    np.testing.assert_array_equal(tifffile.imread(out), labels)


def test_hybrid_trains_with_multi_head_loss(isbi_crop):
    net = build_model("hybrid2d3d", in_channels=1, num_classes=2, options=TINY["hybrid2d3d"]).train()
    base = DiceCELoss()
    loss = with_aux_heads(base, net)
    torch.manual_seed(0)
    x = torch.randn(2, 1, 5, 16, 16)
    y = torch.randint(0, 2, (2, 5, 16, 16))
    out = net(x)
    expected = base(out["main"], y) + 0.33 * base(out["aux2d"], y)
    torch.testing.assert_close(loss(out, y), expected)
    # no multi-loss ablation, plain networks: the criterion is left as it is
    single = build_model("hybrid2d3d", in_channels=1, num_classes=2, options={**TINY["hybrid2d3d"], "multi_loss": False})
    assert with_aux_heads(base, single) is base
    assert with_aux_heads(base, build_model("unet3d-thin", in_channels=1, num_classes=2)) is base


def test_match_target_crops_the_centre():
    target = torch.arange(2 * 8 * 10).reshape(2, 8, 10)
    logits = torch.zeros(2, 3, 4, 6)
    cropped = match_target(logits, target)
    assert cropped.shape == (2, 4, 6)
    assert cropped[0, 0, 0] == target[0, 2, 2] and cropped[1, -1, -1] == target[1, 5, 7]
    assert match_target({"main": torch.zeros(2, 3, 8, 10)}, target) is target
    with pytest.raises(ValueError, match="cannot be matched"):
        match_target(torch.zeros(2, 3, 5, 6), target)  # odd difference: no centre


def test_non_contiguous_slices_refused_for_3d(isbi_crop):
    config = _config(isbi_crop, "hybrid2d3d", train="0,2,4", **TINY["hybrid2d3d"])
    with pytest.raises(DataError, match=r"data.train.slices: '0,2,4' selects non-contiguous slices \[0, 2, 4\]"):
        load_training_volumes(config)
    # the same selection is fine for a 2-D model
    emseg.data.load_training_data(_config(isbi_crop, "unet2d", train="0,2,4"))


def test_3d_validation_split_is_the_last_slices(isbi_crop):
    config = _config(isbi_crop, "unet3d-thin", train="0:8", val=None)
    train, val = load_training_volumes(config)  # val_fraction 0.15 of 8 slices -> 1
    assert [im.shape[0] for im in train.images] == [7] and [im.shape[0] for im in val.images] == [1]
    raw = tifffile.imread(isbi_crop["raw"])
    np.testing.assert_array_equal(val.images[0], raw[7:8])
    assert val.labels[0].dtype == np.int16


def test_patch_size_resolution(isbi_crop):
    assert resolve_patch_size(_config(isbi_crop, "hybrid2d3d")) == (5, 256, 256)  # the model's window
    assert resolve_patch_size(_config(isbi_crop, "unet3d-thick")) == (16, 128, 128)
    assert resolve_patch_size(_config(isbi_crop, "hybrid2d3d", patch=[3, 64, 80])) == (3, 64, 80)
    assert resolve_patch_size(_config(isbi_crop, "hybrid2d3d", patch=64)) == (5, 64, 64)  # default z
    assert resolve_patch_size(_config(isbi_crop, "unet2d", patch=[64, 80])) == (64, 80)
    # valid-padding: rounded up to valid sizes (depth 1: 26 -> 22 -> 11 -> 7 -> 14 -> 10)
    assert resolve_patch_size(_config(isbi_crop, "unet-original", patch=[25, 26], features=[4, 8])) == (26, 26)
    with pytest.raises(ConfigError, match=r"patch_size \[5, 64, 64\] has 3 values .* 'unet2d' is 2-D"):
        _config(isbi_crop, "unet2d", patch=[5, 64, 64])
    with pytest.raises(ConfigError, match="at least 16 pixels"):
        _config(isbi_crop, "hybrid2d3d", patch=[5, 8, 64])
    with pytest.raises(ConfigError, match="context_slices must be 1"):
        _config(isbi_crop, "hybrid2d3d", context_slices=3)


def test_volume_sampler_oversamples_foreground_and_pads():
    rng = np.random.default_rng(0)
    labels = np.zeros((3, 40, 40), np.int16)
    labels[1, 30, 5] = 1  # a single foreground voxel
    image = rng.normal(size=(1, 3, 40, 40)).astype(np.float32)
    sampler = VolumePatchSampler([image], [labels], patch_size=(5, 16, 16), num_classes=2,
                                 foreground_oversampling=1.0, rng=rng)
    x, y = sampler.sample(8)
    assert x.shape == (8, 1, 5, 16, 16) and y.shape == (8, 5, 16, 16) and y.dtype == np.int64
    assert all((patch == 1).sum() == 1 for patch in y)  # every patch holds the foreground voxel
    assert (y[:, 3:] == IGNORE_INDEX).all()  # z padded from 3 to 5 slices: unlabelled
    assert (y[:, :3] != IGNORE_INDEX).all()
    uniform = VolumePatchSampler([image], [labels], patch_size=(5, 16, 16), num_classes=2,
                                 foreground_oversampling=0.0, rng=np.random.default_rng(1))
    assert sum((p == 1).any() for p in uniform.sample(20)[1]) < 20


def test_volume_augmentation_labels_follow_and_z_stays_z():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (16, 3, 8, 8)).astype(np.int64)
    images = labels[:, None].astype(np.float32)
    config = AugmentConfig(brightness=0.0, contrast=0.0)
    x, y = augment_volume_batch(images, labels, config, rng)
    assert x.shape == images.shape and y.shape == labels.shape
    np.testing.assert_array_equal(x[:, 0], y)  # labels follow every geometric transform

    def in_plane(volume):  # the 8 in-plane rotations / transposes (y and x flips are among them)
        return [t for k in range(4) for t in (np.rot90(volume, k, axes=(1, 2)), np.rot90(volume, k, axes=(1, 2)).transpose(0, 2, 1))]

    z_flipped = 0
    for a, b in zip(y, labels):
        plain = any(np.array_equal(a, c) for c in in_plane(b))
        flipped = any(np.array_equal(a, c) for c in in_plane(b[::-1]))
        assert plain or flipped  # z is only ever flipped, never swapped with y or x
        z_flipped += flipped and not plain
    assert 0 < z_flipped < 16


def test_volume_augmentation_deforms_every_section_alike():
    # free rotation and elastic deformation (issue 4's transforms) also apply to 3-D patches, the same in-plane
    # warp for every section: identical sections stay identical, and the labels are moved, not just copied
    rng = np.random.default_rng(3)
    section = np.zeros((24, 24), np.int64)
    section[4:12, 6:20] = 1
    labels = np.repeat(section[None, None], 5, axis=1).repeat(4, axis=0)  # (4, 5, 24, 24)
    images = labels[:, None].astype(np.float32)
    config = AugmentConfig(flips=False, rot90=False, transpose=False, brightness=0.0, contrast=0.0,
                           rotation=30.0, elastic="simard", spatial_probability=1.0)
    x, y = augment_volume_batch(images, labels, config, rng)
    assert x.shape == images.shape and y.shape == labels.shape
    assert all((patch == patch[0]).all() for patch in y)  # one warp for all sections of a patch
    assert any(not np.array_equal(patch[0], section) for patch in y)
    assert set(np.unique(y)) <= {0, 1}


def test_volume_sampler_grid_labelled_and_weights():
    """Guay's window grid, Meyer's labelled windows and weight maps in 3-D (the densecell-2d3d preset's sampling)."""
    rng = np.random.default_rng(0)
    labels = np.zeros((7, 40, 50), np.int16)
    labels[5, 33, 44] = 1  # one labelled foreground voxel
    weights = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    image = weights[None].copy()
    grid = VolumePatchSampler([image], [labels], patch_size=(3, 16, 16), num_classes=2, rng=rng, weights=[weights],
                              mode="grid", spacing=(12, 10))
    # z0 in 0, 3 (3 + 3 = 6 <= 7; 6 + 3 > 7): the patch depth; y0 in 0, 12, 24; x0 in 0, 10, 20, 30
    expected = {(0, z, y, x) for z in (0, 3) for y in (0, 12, 24) for x in (0, 10, 20, 30)}
    first = [grid._window() for _ in range(len(expected))]
    assert set(first) == expected
    x, y, w = grid.sample(5)
    assert w.shape == y.shape == (5, 3, 16, 16) and np.array_equal(x[:, 0], w)  # weights cut with the window
    labelled = VolumePatchSampler([image], [labels], patch_size=(3, 16, 16), num_classes=2,
                                  rng=np.random.default_rng(1), mode="labelled", labelled_fraction=1.0)
    corners = [labelled._window() for _ in range(400)]
    assert all(z <= 5 < z + 3 and y <= 33 < y + 16 and x <= 44 < x + 16 for _, z, y, x in corners)
    assert len({c[1] for c in corners}) == 2 and len({c[3] for c in corners}) == 6  # z0 in 3..4, x0 in 29..34
    with pytest.raises(ValueError, match="weight map 0"):
        VolumePatchSampler([image], [labels], patch_size=(3, 16, 16), num_classes=2, rng=rng, weights=[weights[:2]])


def test_volume_augmentation_moves_weights_with_labels():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 5, (12, 3, 8, 8)).astype(np.int64)
    images = labels[:, None].astype(np.float32)
    weights = labels.astype(np.float32) * 10
    config = AugmentConfig(brightness=0.0, contrast=0.0)
    x, y, w = augment_volume_batch(images, labels, config, rng, weights=weights)
    np.testing.assert_array_equal(w, y * 10)


def test_densecell_preset_trains_hybrid2d3d_with_weight_maps_and_grid(isbi_crop, tmp_path):
    """The densecell-2d3d preset with its own network: Guay weight map per section, window grid, multi-loss."""
    from emseg.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
data:
  train: {{image: {isbi_crop['raw']}, labels: {isbi_crop['labels']}, slices: "0:6"}}
  val: {{image: {isbi_crop['raw']}, labels: {isbi_crop['labels']}, slices: "6:8"}}
  classes: [interior, membrane]
model: {{name: hybrid2d3d, features: [4, 8], features_3d: 4}}
training: {{max_minutes: 0.5, epochs: 2, iterations_per_epoch: 2, batch_size: 1, patch_size: [3, 32, 32],
           patch_sampling: {{mode: grid, spacing: 48}}, checkpoint_metric: val_loss}}
""")
    config = load_config(cfg, recipe="densecell-2d3d")
    assert config.model.name == "hybrid2d3d" and config.training.weight_map.kind == "guay"
    run = emseg.train(config, tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(np.isfinite(r["train_loss"]) and r["val_loss"] > 0 for r in lines)
    maps = np.load(run.run_dir / "weight_maps.npz")
    assert len([k for k in maps.files if k.startswith("w")]) == 6  # one map per training section
    raw = tifffile.imread(isbi_crop["raw"])
    labels, _ = Predictor.from_checkpoint(run.run_dir).predict_volume(raw[:8])
    assert labels.shape == raw[:8].shape

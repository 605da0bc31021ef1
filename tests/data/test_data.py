"""Data loading checks, normalisation, patch sampling and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from emseg.config import AugmentConfig, config_from_dict
from emseg.data import IGNORE_INDEX, DataError, Normalizer, PatchSampler, augment_batch, load_training_data


def _config(raw, lab, classes=("a", "b", "c"), **data):
    return config_from_dict({"data": {"train": {"image": str(raw), "labels": str(lab)}, "classes": list(classes), **data}})


def test_shape_mismatch_names_both_files(tmp_path):
    tifffile.imwrite(tmp_path / "raw.tif", np.zeros((2, 8, 8), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((2, 8, 9), np.uint8), photometric="minisblack")
    with pytest.raises(DataError) as info:
        load_training_data(_config(tmp_path / "raw.tif", tmp_path / "lab.tif"))
    assert "raw.tif" in str(info.value) and "lab.tif" in str(info.value) and "(2, 8, 9)" in str(info.value)


def test_label_values_outside_classes_are_reported(tmp_path):
    lab = np.zeros((2, 8, 8), np.uint8)
    lab[1, 0, 0] = 7
    tifffile.imwrite(tmp_path / "raw.tif", np.zeros((2, 8, 8), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", lab, photometric="minisblack")
    with pytest.raises(DataError, match=r"values \[7\] outside the class list 0..2.*ignore_label"):
        load_training_data(_config(tmp_path / "raw.tif", tmp_path / "lab.tif"))


def test_ignore_label_becomes_ignore_index_and_val_split(tmp_path):
    lab = np.ones((4, 8, 8), np.uint8)
    lab[:, :2] = 255
    tifffile.imwrite(tmp_path / "raw.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", lab, photometric="minisblack")
    train, val = load_training_data(_config(tmp_path / "raw.tif", tmp_path / "lab.tif", ignore_label=255, val_fraction=0.25))
    assert len(train) == 3 and len(val) == 1
    assert (train.labels[0][:2] == IGNORE_INDEX).all() and (train.labels[0][2:] == 1).all()
    assert not set(train.names) & set(val.names)


def test_normalizer_zero_mean_unit_std():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (16, 16)).astype(np.uint8) for _ in range(3)]
    norm = Normalizer.fit(images)
    stacked = np.concatenate([norm(im).ravel() for im in images])
    assert abs(stacked.mean()) < 1e-5 and abs(stacked.std() - 1) < 1e-4
    assert Normalizer.from_dict(norm.to_dict()) == norm


def test_sampler_oversamples_rare_class():
    lab = np.zeros((256, 256), np.int16)
    lab[100:104, 100:104] = 1  # 16 of 65536 pixels
    image = np.zeros((1, 256, 256), np.float32)
    rng = np.random.default_rng(0)
    sampler = PatchSampler([image], [lab], patch_size=(32, 32), num_classes=2, foreground_oversampling=1.0, rng=rng)
    _, y = sampler.sample(50)
    assert (y == 1).any(axis=(1, 2)).all()
    uniform = PatchSampler([image], [lab], patch_size=(32, 32), num_classes=2, foreground_oversampling=0.0, rng=rng)
    _, y = uniform.sample(50)
    assert (y == 1).any(axis=(1, 2)).mean() < 0.5


def test_sampler_pads_small_slices_with_ignore():
    sampler = PatchSampler([np.zeros((1, 10, 12), np.float32)], [np.ones((10, 12), np.int16)], patch_size=(16, 16),
                           num_classes=2, rng=np.random.default_rng(0))
    x, y = sampler.sample(2)
    assert x.shape == (2, 1, 16, 16) and y.shape == (2, 16, 16)
    assert (y[:, 10:, :] == IGNORE_INDEX).all() and (y[:, :10, :12] == 1).all()


def test_augmentation_keeps_labels_aligned():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, (8, 24, 24))
    x = y[:, None].astype(np.float32) * 10  # image encodes its own label
    cfg = AugmentConfig(brightness=0.0, contrast=0.0)
    ax, ay = augment_batch(x, y, cfg, rng)
    np.testing.assert_array_equal(ax[:, 0], ay * 10)
    assert not np.array_equal(ay, y)  # something was transformed


def test_intensity_jitter_is_affine_and_bounded():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 1, 8, 8)).astype(np.float32)
    y = np.zeros((16, 8, 8), np.int64)
    cfg = AugmentConfig(flips=False, rot90=False, transpose=False, brightness=0.2, contrast=0.1)
    ax, _ = augment_batch(x, y, cfg, rng)
    for a, b in zip(ax, x):
        gain, shift = np.polyfit(b.ravel(), a.ravel(), 1)
        assert 0.9 - 1e-4 <= gain <= 1.1 + 1e-4 and abs(shift) <= 0.2 + 1e-4

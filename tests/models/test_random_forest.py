"""Tests of the ilastik-style random-forest baseline on small real EPFL crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emseg.models._random_forest import FORMAT_VERSION, RandomForestSegmenter

tifffile = pytest.importorskip("tifffile")

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "epfl-multiclass"
NUM_CLASSES = 7
CROP = np.s_[512:768, 768:1024]  # train crop with classes 0-5
TEST_CROP = np.s_[256:512, 256:512]  # test crop with classes 0-5


def _normalise(raw: np.ndarray) -> np.ndarray:
    x = raw.astype(np.float32)
    return (x - x.mean()) / x.std()


@pytest.fixture(scope="module")
def epfl() -> dict:
    if not DATA.is_dir():
        pytest.skip(f"EPFL data not found at {DATA}")
    train_raw = tifffile.imread(DATA / "train_raw.tif")
    train_lab = tifffile.imread(DATA / "train_labels.tif")
    test_raw = tifffile.imread(DATA / "test_raw.tif")
    test_lab = tifffile.imread(DATA / "test_labels.tif")
    return {
        "images": [_normalise(train_raw[z][CROP]) for z in (0, 4)],
        "labels": [train_lab[z][CROP].astype(np.int64) for z in (0, 4)],
        "test_image": _normalise(test_raw[0][TEST_CROP]),
        "test_label": test_lab[0][TEST_CROP].astype(np.int64),
    }


@pytest.fixture(scope="module")
def fitted(epfl) -> RandomForestSegmenter:
    model = RandomForestSegmenter(n_estimators=20, samples_per_class=2000, random_state=0)
    return model.fit(epfl["images"], epfl["labels"], num_classes=NUM_CLASSES)


@pytest.fixture(scope="module")
def test_proba(fitted, epfl) -> np.ndarray:
    return fitted.predict_proba(epfl["test_image"])


def _mean_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean IoU over the classes present in ``truth``."""
    ious = []
    for c in np.unique(truth):
        inter = np.logical_and(pred == c, truth == c).sum()
        union = np.logical_or(pred == c, truth == c).sum()
        ious.append(inter / union)
    return float(np.mean(ious))


def _leaves(obj):
    if isinstance(obj, dict):
        for key, value in obj.items():
            assert isinstance(key, str)
            yield from _leaves(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _leaves(value)
    else:
        yield obj


def test_features_shape_dtype_finite(epfl):
    model = RandomForestSegmenter()
    image = epfl["images"][0][:100, :120]
    feats = model.features(image)
    assert feats.shape == (100, 120, model.n_features)
    assert model.n_features == 1 + 8 * 6 == len(model.feature_names)
    assert feats.dtype == np.float32
    assert np.isfinite(feats).all()
    np.testing.assert_array_equal(feats[..., 0], image)
    # Smoothing at growing sigma reduces the variance of the image.
    smooth = [feats[..., model.feature_names.index(f"gaussian_smoothing(sigma={s:g})")].std() for s in model.sigmas]
    assert all(a > b for a, b in zip(smooth, smooth[1:]))


def test_features_reject_bad_input():
    model = RandomForestSegmenter()
    with pytest.raises(ValueError, match="2-D"):
        model.features(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        model.features(np.full((8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="sigmas"):
        RandomForestSegmenter(sigmas=(1.0, -2.0))


def test_beats_majority_baseline(fitted, epfl, test_proba):
    truth = epfl["test_label"]
    pred = np.argmax(test_proba, axis=0)
    majority = np.bincount(np.concatenate([lab.ravel() for lab in epfl["labels"]])).argmax()
    baseline = _mean_iou(np.full_like(truth, majority), truth)
    score = _mean_iou(pred, truth)
    assert score > baseline + 0.15, (score, baseline)


def test_probabilities_sum_to_one(fitted, epfl, test_proba):
    image = epfl["test_image"]
    assert test_proba.shape == (NUM_CLASSES,) + image.shape
    assert test_proba.dtype == np.float32
    assert (test_proba >= 0).all()
    np.testing.assert_allclose(test_proba.sum(axis=0), 1.0, atol=1e-5)
    # Axon (class 6) is absent from the training crops: probability exactly 0.
    assert 6 not in fitted.classes_
    assert (test_proba[6] == 0).all()


def test_row_chunks_do_not_change_prediction(fitted, epfl, test_proba):
    chunked = fitted.predict_proba(epfl["test_image"], chunk_rows=37)
    np.testing.assert_array_equal(chunked, test_proba)


def test_state_dict_roundtrip(fitted, epfl, test_proba, tmp_path):
    state = fitted.state_dict()
    allowed = (torch.Tensor, int, float, str, bool, type(None))
    assert all(isinstance(leaf, allowed) for leaf in _leaves(state))
    path = tmp_path / "rf.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    model = RandomForestSegmenter.from_state_dict(loaded)
    assert model.num_classes == NUM_CLASSES
    assert model.n_estimators == 20
    np.testing.assert_array_equal(model.classes_, fitted.classes_)
    np.testing.assert_array_equal(model.predict_proba(epfl["test_image"]), test_proba)


def test_from_state_dict_validates(fitted):
    state = fitted.state_dict()
    missing = {k: v for k, v in state.items() if k != "trees"}
    with pytest.raises(ValueError, match="'trees'"):
        RandomForestSegmenter.from_state_dict(missing)
    with pytest.raises(ValueError, match="format_version"):
        RandomForestSegmenter.from_state_dict({**state, "format_version": FORMAT_VERSION + 1})
    broken_tree = {k: v for k, v in state["trees"][0].items() if k != "threshold"}
    with pytest.raises(ValueError, match=r"trees\[0\]\.threshold"):
        RandomForestSegmenter.from_state_dict({**state, "trees": [broken_tree, *state["trees"][1:]]})
    hyper = {k: v for k, v in state["hyper_parameters"].items() if k != "sigmas"}
    with pytest.raises(ValueError, match="hyper_parameters.sigmas"):
        RandomForestSegmenter.from_state_dict({**state, "hyper_parameters": hyper})


def test_ignore_label_is_never_sampled(epfl):
    image = epfl["images"][0][:96, :96].copy()
    label = epfl["labels"][0][:96, :96].copy()
    rng = np.random.default_rng(1)
    image[:40, :40] = rng.normal(10.0, 5.0, size=(40, 40))  # nonsense content
    label[:40, :40] = 255
    model = RandomForestSegmenter(sigmas=(1.0, 3.5), n_estimators=3, samples_per_class=10**6)
    with pytest.raises(ValueError, match="ignore_label"):
        model.fit([image], [label], num_classes=NUM_CLASSES)
    calls = []
    model.fit([image], [label], num_classes=NUM_CLASSES, ignore_label=255, progress=lambda *a: calls.append(a))
    assert calls == [(1, 2), (2, 2)]
    # With a budget above every class size, exactly the annotated pixels are used.
    expected = np.bincount(label[label != 255], minlength=NUM_CLASSES)
    np.testing.assert_array_equal(model.sample_counts_, expected)
    assert set(model.classes_.tolist()) == set(np.flatnonzero(expected).tolist())
    assert model.predict_proba(image).shape == (NUM_CLASSES, 96, 96)


def test_class_balanced_seeded_sampling(epfl):
    images = [im[:64, :64] for im in epfl["images"]]
    labels = [lab[:64, :64] for lab in epfl["labels"]]
    kwargs = dict(sigmas=(1.0,), n_estimators=2, samples_per_class=50, random_state=3)
    a = RandomForestSegmenter(**kwargs).fit(images, labels, num_classes=NUM_CLASSES)
    b = RandomForestSegmenter(**kwargs).fit(images, labels, num_classes=NUM_CLASSES)
    totals = np.bincount(np.concatenate([lab.ravel() for lab in labels]), minlength=NUM_CLASSES)
    np.testing.assert_array_equal(a.sample_counts_, np.minimum(totals, 50))
    np.testing.assert_array_equal(a.predict_proba(images[0]), b.predict_proba(images[0]))


def test_absent_class_gets_zero_probability(epfl):
    image, label = epfl["images"][0][:128, :128], epfl["labels"][0][:128, :128].copy()
    label[label == 2] = 0  # remove mitochondrion interior from training
    model = RandomForestSegmenter(sigmas=(1.0, 3.5), n_estimators=5, samples_per_class=500)
    model.fit([image], [label], num_classes=NUM_CLASSES)
    proba = model.predict_proba(image)
    assert 2 not in model.classes_
    assert (proba[2] == 0).all()
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)


def test_single_class_training(tmp_path):
    image = np.random.default_rng(0).normal(size=(40, 50)).astype(np.float32)
    model = RandomForestSegmenter(sigmas=(1.0,), n_estimators=2)
    model.fit([image], [np.full((40, 50), 3)], num_classes=4)
    torch.save(model.state_dict(), tmp_path / "one.pt")
    loaded = RandomForestSegmenter.from_state_dict(torch.load(tmp_path / "one.pt", weights_only=True))
    expected = np.zeros((4, 40, 50), np.float32)
    expected[3] = 1.0
    np.testing.assert_array_equal(loaded.predict_proba(image), expected)


def test_fit_rejects_mismatched_inputs(epfl):
    image, label = epfl["images"][0][:32, :32], epfl["labels"][0][:32, :32]
    model = RandomForestSegmenter(n_estimators=2)
    with pytest.raises(ValueError, match="1 images but 2 label images"):
        model.fit([image], [label, label], num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"labels\[0\] has shape \(32, 31\)"):
        model.fit([image], [label[:, :31]], num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="expected values in"):
        model.fit([image], [label], num_classes=2)
    with pytest.raises(RuntimeError, match="fit"):
        model.predict_proba(image)

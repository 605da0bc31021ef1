"""Issue 17: one load_predictor, a predictor protocol, the ensemble by composition, the TTA loop once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from emseg.data import Normalizer
from emseg.inference import EnsemblePredictor, Predictor, SegmentationPredictor, load_predictor
from emseg.models import build_model, save_checkpoint

EPFL_RAW = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "epfl-multiclass" / "train_raw.tif"
SRC = str(Path(__file__).resolve().parents[2] / "src")
CLASSES = ["background", "mito", "membrane"]


def _net(name: str = "unet2d", *, seed: int = 0, features=(4, 8)) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_model(name, in_channels=1, num_classes=len(CLASSES), options={"features": list(features)})
    for m in net.modules():  # non-trivial batch-norm statistics: the network is far from flip-symmetric
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _raw(shape) -> np.ndarray:
    z, y, x = shape
    return tifffile.imread(EPFL_RAW)[:z, 100:100 + y, 200:200 + x]


def _predictor(net, **options) -> Predictor:
    return Predictor(net, classes=CLASSES, normalizer=Normalizer(mean=110.0, std=35.0), precision="fp32", **options)


def _checkpoint(seed: int) -> dict:
    net = _net(seed=seed)
    return {"backend": "torch", "model": {"name": "unet2d", "options": {"features": [4, 8]}, "in_channels": 1},
            "classes": CLASSES, "normalization": {"mean": 110.0, "std": 35.0}, "state": net.state_dict(),
            "inference": {"window": [64, 64], "overlap": 0.25, "divisor": 2}}


@pytest.mark.parametrize("name, shape, window", [("unet2d", (1, 64, 64), {"window": (64, 64)}),
                                                 ("unet3d-thin", (4, 32, 32), {"window_3d": (4, 32, 32)})])
def test_tta_is_the_flip_average_flipped_back(name, shape, window):
    """With one window covering the input, TTA is flip-equivariant: TTA(flip x) == flip TTA(x), and differs from
    the plain prediction (a missing flip-back or a missing flip breaks the first, a no-op loop the second)."""
    net = _net(name)
    raw = _raw(shape)
    tta = _predictor(net, tta=True, **window)
    plain = _predictor(net, tta=False, **window)
    flipped = np.ascontiguousarray(raw[..., ::-1, :])
    if name == "unet2d":
        p, q, r = tta.predict_proba_slice(raw[0]), tta.predict_proba_slice(flipped[0]), plain.predict_proba_slice(raw[0])
    else:
        p, q, r = tta.predict_proba_volume(raw), tta.predict_proba_volume(flipped), plain.predict_proba_volume(raw)
    np.testing.assert_allclose(q, p[..., ::-1, :], atol=1e-5)
    assert float(np.abs(p - r).max()) > 1e-4
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)


def test_ensemble_has_members_and_satisfies_the_protocol():
    members = [_predictor(_net(seed=s), window=(64, 64)) for s in (0, 1)]
    ensemble = EnsemblePredictor(members, method="mean")
    assert Predictor not in type(ensemble).__mro__  # composition, not a subclass
    assert isinstance(ensemble, SegmentationPredictor) and isinstance(members[0], SegmentationPredictor)
    assert isinstance(ensemble, Predictor)  # still usable where code written for one model checks for a Predictor
    raw = _raw((2, 64, 64))
    labels, probs = ensemble.predict_volume(raw, probabilities=True)
    manual = (members[0].predict_proba_volume(raw) + members[1].predict_proba_volume(raw)) / 2
    np.testing.assert_allclose(probs, manual, atol=1e-6)
    assert labels.dtype == np.uint8 and np.array_equal(labels, np.argmax(manual, axis=0))


def test_load_predictor_loads_models_and_ensembles_without_the_layers_above(tmp_path):
    single, ensemble = tmp_path / "single.pt", tmp_path / "ensemble.pt"
    save_checkpoint(single, _checkpoint(0))
    save_checkpoint(ensemble, {"backend": "ensemble", "classes": CLASSES, "method": "weighted", "weights": [0.25, 0.75],
                               "members": [{"format": "emseg-model", "format_version": 1, **_checkpoint(s)} for s in (0, 1)]})
    one = load_predictor(single, precision="fp32")
    assert type(one) is Predictor and one.window == (64, 64) and one.classes == CLASSES
    ens = load_predictor(ensemble, precision="fp32")
    assert type(ens) is EnsemblePredictor and ens.weights == [0.25, 0.75] and len(ens.members) == 2
    raw = _raw((1, 64, 64))
    expected = 0.25 * ens.members[0].predict_proba_volume(raw) + 0.75 * ens.members[1].predict_proba_volume(raw)
    np.testing.assert_allclose(ens.predict_proba_volume(raw), expected, atol=1e-6)
    # A fresh process: loading an ensemble imports neither emseg.ensemble nor emseg.training.
    code = ("import sys; from emseg.inference import load_predictor; "
            f"p = load_predictor({str(ensemble)!r}, precision='fp32'); "
            "print(type(p).__name__, sorted({m.split('.')[1] for m in sys.modules "
            "if m.startswith(('emseg.ensemble', 'emseg.training'))}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": SRC},
                         check=True).stdout.strip()
    assert out == "EnsemblePredictor []"

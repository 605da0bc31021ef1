"""Blockwise prediction of the other predictor kinds: ensembles and grain-filter models equal in-memory runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

import emseg
from emseg.inference import Predictor
from emseg.io import write_image

EPFL_RAW = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "epfl-multiclass" / "train_raw.tif"


@pytest.fixture(autouse=True)
def _engine_threads(one_torch_thread):
    """Every test here compares with the engine, which uses one torch thread."""


def _model_checkpoint(*, in_channels: int, context: int = 1, grain: list[int] | None = None, seed: int = 0) -> dict:
    """A randomly initialised unet2d checkpoint with a confident, non-trivial head (accuracy is not the point)."""
    from emseg.models import build_model

    torch.manual_seed(seed)
    net = build_model("unet2d", in_channels=in_channels, num_classes=4, options={"features": [4, 8]})
    with torch.no_grad():
        net.head.conv.weight.mul_(20.0)
    net.eval()
    ckpt = {
        "format": "emseg-model", "format_version": 1, "backend": "torch",
        "model": {"name": "unet2d", "options": {"features": [4, 8]}, "in_channels": in_channels,
                  "context_slices": context, "spatial_dims": 2},
        "classes": ["a", "b", "c", "d"],
        "normalization": {"mean": 110.0, "std": 35.0},
        "state": net.state_dict(),
        "inference": {"window": [64, 64], "overlap": 0.25, "divisor": 2},
    }
    if grain:
        ckpt["preprocess"] = {"grain_filter": grain}
    return ckpt


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    out = tmp_path_factory.mktemp("kinds")
    raw = tifffile.imread(EPFL_RAW)[:4, 200:296, 300:420]
    write_image(out / "raw.zarr", raw, chunks=(2, 48, 60))
    return out, raw


def _blockwise(model, source, out, block):
    path = emseg.predict(model, str(source), out, block=block, progress=False)
    return zarr.open_array(str(path), mode="r")[...]


def test_ensemble_runs_blockwise_and_equals_in_memory(volume, tmp_path):
    from emseg.ensemble import ensemble_checkpoint
    from emseg.models import save_checkpoint

    folder, raw = volume
    members = [_model_checkpoint(in_channels=1, seed=0), _model_checkpoint(in_channels=3, context=3, seed=1)]
    save_checkpoint(tmp_path / "ens.pt", ensemble_checkpoint(members, method="weighted", weights=[0.3, 0.7],
                                                             names=["2d", "2.5d"]))
    ens = Predictor.from_checkpoint(tmp_path / "ens.pt", overlap="auto")
    expected = ens.predict_proba_volume(raw).argmax(0)
    assert len(np.unique(expected)) > 1
    # in-plane blocks crossing window seams, with the 2.5-D member's z halo: identical labels
    labels = _blockwise(tmp_path / "ens.pt", folder / "raw.zarr", tmp_path / "ens.zarr", (1, 48, 60))
    np.testing.assert_array_equal(labels, expected)
    # and the ensemble is not just one of its members
    alone = Predictor.from_checkpoint_dict(members[1], overlap="auto").predict_proba_volume(raw).argmax(0)
    assert (alone != expected).any()


def test_grain_filter_model_runs_on_whole_slices_blockwise(volume, tmp_path):
    from emseg.models import save_checkpoint

    folder, raw = volume
    save_checkpoint(tmp_path / "grain.pt", _model_checkpoint(in_channels=3, grain=[20, 100]))
    predictor = Predictor.from_checkpoint(tmp_path / "grain.pt", overlap="auto")
    assert predictor.grain_filter == [20, 100]
    # the filter depends on the whole slice: the engine reads whole slices whatever the block asks
    assert predictor.block_input((slice(1, 2), slice(48, 96), slice(0, 60)), raw.shape) == (
        slice(1, 2), slice(0, raw.shape[1]), slice(0, raw.shape[2]))
    expected = predictor.predict_proba_volume(raw).argmax(0)
    labels = _blockwise(tmp_path / "grain.pt", folder / "raw.zarr", tmp_path / "grain.zarr", (1, 48, 60))
    np.testing.assert_array_equal(labels, expected)

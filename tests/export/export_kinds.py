"""Checkpoints of every kind of registry network for the export tests, written like `emseg train` writes them.

Networks other than the trained 2-D U-Net (``tiny_run``) are tiny and freshly initialised with a fixed seed
(their batch-norm statistics perturbed so the classes compete): the exports are compared with the same
weights in torch, so what matters is that the outputs are non-trivial, which each test checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from conftest import EPFL, EPFL_CLASSES


def write_checkpoint(path: Path, name: str, options: dict, *, context: int = 1, seed: int = 0,
                     offsets: list[float] | None = None, normalization: dict | None = None) -> Path:
    from emseg.models import MODELS, build_model, model_divisor
    from emseg.models import save_checkpoint

    spec = MODELS.get(name)
    torch.manual_seed(seed)
    net = build_model(name, in_channels=context, num_classes=len(EPFL_CLASSES), options=options, pretrained=False)
    _calibrate_batch_norm(net, context=context, spatial_dims=spec.spatial_dims, valid=spec.valid_padding)
    inference = {"window": [512, 512], "overlap": 0.25, "divisor": model_divisor(net), "spatial_dims": spec.spatial_dims}
    if spec.spatial_dims == 3:
        inference["window_3d"] = [4, 64, 64]
    if spec.valid_padding:
        size = net.valid_input_size(388 + 2 * net.output_margin)
        inference.update(margin=int(net.output_margin), window=[size, size])
    if offsets is not None:
        inference["logit_offsets"] = offsets
    save_checkpoint(path, {
        "backend": "torch",
        "model": {"name": name, "options": options, "in_channels": context, "context_slices": context,
                  "spatial_dims": spec.spatial_dims},
        "classes": list(EPFL_CLASSES),
        "normalization": normalization or {"mean": 128.0, "std": 40.0},
        "inference": inference,
        "preprocess": {},
        "state": net.state_dict(),
        "training": {"config": {}},
    })
    return path


@pytest.fixture(scope="session")
def epfl_test_crop(tmp_path_factory) -> Path:
    """Two real EPFL test slices, 96 x 128 (a crop the default 512 window covers in one piece)."""
    path = tmp_path_factory.mktemp("epfl_test") / "test_raw.tif"
    tifffile.imwrite(path, tifffile.imread(EPFL / "test_raw.tif")[:2, 300:396, 300:428], photometric="minisblack")
    return path


@pytest.fixture(scope="session")
def epfl_stack(tmp_path_factory) -> Path:
    """Four real EPFL training slices, 64 x 96 (for 3-D and 2.5-D models)."""
    path = tmp_path_factory.mktemp("epfl_stack") / "raw.tif"
    tifffile.imwrite(path, tifffile.imread(EPFL / "train_raw.tif")[:4, 400:464, 200:296], photometric="minisblack")
    return path


def _calibrate_batch_norm(net: torch.nn.Module, *, context: int, spatial_dims: int, valid: bool) -> None:
    """Batch-norm statistics of real EPFL tiles (a freshly built net with unit statistics says one class
    everywhere); the last layer's weights scaled up so the classes compete."""
    raw = tifffile.imread(EPFL / "train_raw.tif")[4:8, 200:328, 300:428].astype(np.float32)
    x = torch.from_numpy((raw - 128.0) / 40.0)
    size = net.valid_input_size(100) if valid else 128
    x = x[None, None, :, :size, :size] if spatial_dims == 3 else x[:context, :size, :size][None]
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        net(x)
        last = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))][-1]
        last.weight.mul_(8.0)
    net.eval()


KINDS = {
    # name -> (registry name, options, context slices)
    "unet2d-2.5d": ("unet2d", {"features": [4, 8]}, 3),
    "encoder-unet": ("unet-resnet18", {"width": 0.125, "decoder_channels": [8, 8, 8, 8, 8],
                                       "bottleneck_channels": 16}, 1),
    "unet-original": ("unet-original", {"features": [4, 8], "norm": "batch"}, 1),
    "unet3d": ("unet3d-thin", {"features": [4, 8]}, 1),
}


@pytest.fixture(scope="session")
def kind_checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("kinds")
    return {kind: write_checkpoint(folder / f"{kind}.pt", name, options, context=context, seed=i)
            for i, (kind, (name, options, context)) in enumerate(KINDS.items())}


def labels_vary(labels: np.ndarray) -> bool:
    return len(np.unique(labels)) > 1

"""What a network's run is built from before its first step: the patch sampler (with weight maps) and the
loss with its class weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from emseg._device import default_device, resolve_precision
from emseg.config import Config
from emseg.data import LabelledSlices, LabelledVolumes, Normalizer, PatchSampler, class_frequencies
from emseg.losses import build_criterion
from emseg.training._inputs import weight_maps, with_grain_channels
from emseg.training._spatial import volume_sampler

__all__ = ["build_sampler", "class_weights_from_frequencies", "start_run", "training_criterion"]


def start_run(*, seed: int, num_threads: int | None, precision: str) -> tuple[np.random.Generator, torch.device, Any]:
    """The start of a run (``emseg train``, ``emseg pretrain``): torch's threads and seed set, the run's
    numpy generator, the device and the autocast dtype of ``precision`` there (``None``: fp32)."""
    if num_threads:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = default_device()
    return rng, device, resolve_precision(precision, device)


def class_weights_from_frequencies(freqs: np.ndarray, mode: str = "auto") -> np.ndarray:
    """Cross-entropy class weights from class frequencies; 0 for classes absent from the training labels.

    ``auto``: ``1 / sqrt(frequency)``, scaled to mean 1 over the classes present.
    ``rare``: ``max(1, sqrt(median / frequency))`` with the median frequency of the
    classes present, so only classes rarer than the median class are weighted up
    (by the square root of median frequency balancing, Eigen & Fergus 2015) and
    the common ones keep weight 1.
    """
    freqs = np.asarray(freqs, dtype=np.float64)
    weights = np.zeros_like(freqs)
    present = freqs > 0
    if mode == "auto":
        weights[present] = 1.0 / np.sqrt(freqs[present])
        weights[present] /= weights[present].mean()
    elif mode == "rare":
        weights[present] = np.maximum(1.0, np.sqrt(np.median(freqs[present]) / freqs[present]))
    else:
        raise ValueError(f"class weight mode must be 'auto' or 'rare', got {mode!r}")
    return weights.astype(np.float32)


def _restack(maps: list[np.ndarray], volumes: list[np.ndarray]) -> list[np.ndarray]:
    """Per-slice ``(Y, X)`` maps, in order, back into one ``(Z, Y, X)`` array per label sub-stack."""
    out, k = [], 0
    for vol in volumes:
        out.append(np.stack(maps[k:k + vol.shape[0]]).astype(np.float32))
        k += vol.shape[0]
    return out


def build_sampler(config: Config, out_dir: Path, train_data: LabelledSlices, val_data: LabelledSlices, *,
                  normalizer: Normalizer, rng: np.random.Generator, patch_size: list[int],
                  progress: bool) -> tuple[Any, Any, Any]:
    """The training patch sampler and the weight maps (``training.weight_map``) of training and validation.

    Returns:
        ``(sampler, train_weight_maps, val_weight_maps)``; the maps are ``None`` without a weight map.
    """
    tc = config.training
    num_classes = len(config.data.classes)
    grain = list(config.preprocess.grain_filter)
    wmaps = val_wmaps = None
    if isinstance(train_data, LabelledVolumes):  # 3-D model: (z, y, x) patches of sub-stacks
        if grain:
            raise ValueError(f"preprocess.grain_filter: not available for the 3-D model {config.model.name!r} yet; "
                             f"remove the key or use a 2-D model")
        if tc.weight_map is not None:  # per 2-D section, as Guay et al.; restacked into (Z, Y, X) maps
            spec = tc.weight_map.model_dump(mode="json")
            train_slices = [s for vol in train_data.labels for s in vol]
            wmaps = _restack(weight_maps(spec, train_slices, num_classes=num_classes, cache_dir=out_dir),
                             train_data.labels)
            if len(val_data):
                val_wmaps = _restack(weight_maps(spec, [s for vol in val_data.labels for s in vol],
                                                 num_classes=num_classes, balance_from=train_slices), val_data.labels)
        return volume_sampler(config, train_data, normalizer, rng, weights=wmaps), wmaps, val_wmaps
    norm_images = [normalizer(im) for im in with_grain_channels(train_data.images, grain, progress=progress)]
    if tc.weight_map is not None:
        spec = tc.weight_map.model_dump(mode="json")
        wmaps = weight_maps(spec, train_data.labels, num_classes=num_classes, cache_dir=out_dir)
        val_wmaps = weight_maps(spec, val_data.labels, num_classes=num_classes, balance_from=train_data.labels) if len(val_data) else None
    ps = tc.patch_sampling
    sampler = PatchSampler(norm_images, train_data.labels, patch_size=patch_size, num_classes=num_classes,
                           background=config.data.background, foreground_oversampling=tc.foreground_oversampling, rng=rng,
                           weights=wmaps, mode=ps.mode, labelled_fraction=ps.labelled_fraction,
                           spacing=None if ps.spacing is None else tuple(ps.spacing))
    return sampler, wmaps, val_wmaps


def training_criterion(config: Config, train_data: LabelledSlices, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The loss of ``training.loss`` with the class weights of ``training.class_weights``; returns
    ``(criterion, class_weights)`` (the weights as a tensor, or ``None``)."""
    tc = config.training
    num_classes = len(config.data.classes)
    freqs = class_frequencies(train_data.labels, num_classes)
    if isinstance(tc.class_weights, str):  # auto | rare
        weights = torch.from_numpy(class_weights_from_frequencies(freqs, tc.class_weights))
    elif tc.class_weights is None:
        weights = None
    else:
        weights = torch.tensor(tc.class_weights, dtype=torch.float32)
    criterion = build_criterion(tc, num_classes=num_classes, class_weights=weights,
                                auto_weights=class_weights_from_frequencies(freqs).tolist()).to(device)
    return criterion, weights

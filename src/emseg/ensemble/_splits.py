"""Slice bookkeeping on configurations: the training slices, a frozen validation split, k folds.

All of it is configuration manipulation: the trainer is given ordinary configs
whose ``data.train`` / ``data.val`` entries select slices (``slices: "0,3,5"``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from emseg.config import Config, VolumeSource, config_from_dict
from emseg.data import parse_slices
from emseg.io import open_image

logger = logging.getLogger(__name__)

__all__ = ["FOLD_SPLITS", "fold_configs", "format_slices", "freeze_validation_split", "training_slices",
           "validation_sources"]

#: ``contiguous``: fold i is the i-th block of consecutive training slices (neighbouring EM
#: slices are correlated, so this is the honest default); ``interleaved``: slice j goes to fold j mod K.
FOLD_SPLITS = ("contiguous", "interleaved")


def format_slices(indices: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0:3,5,7:9"`` (the syntax of :func:`parse_slices`)."""
    parts, run = [], []
    for z in sorted(set(int(i) for i in indices)):
        if run and z == run[-1] + 1:
            run.append(z)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}:{run[-1] + 1}")
        run = [z]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}:{run[-1] + 1}")
    return ",".join(parts)


def _depth(source: VolumeSource) -> int:
    with open_image(source.image) as data:
        return int(data.array.shape[0])


def training_slices(config: Config) -> list[tuple[int, int]]:
    """Every selected training slice as ``(index into data.train, z)``, in the trainer's order."""
    out = []
    for i, source in enumerate(config.data.train):
        out += [(i, z) for z in parse_slices(source.slices, _depth(source))]
    return out


def _with_data(config: Config, train: list[tuple[int, int]], val: list[tuple[int, int]]) -> Config:
    """A copy of ``config`` training on ``train`` and validating on ``val`` (pairs of (entry, z))."""
    data = config.model_dump(mode="json")

    def entries(pairs: list[tuple[int, int]]) -> list[dict[str, Any]]:
        out = []
        for i, source in enumerate(config.data.train):
            zs = [z for j, z in pairs if j == i]
            if zs:
                out.append({"image": source.image, "labels": source.labels, "slices": format_slices(zs)})
        return out

    data["data"]["train"] = entries(train)
    data["data"]["val"] = entries(val)
    return config_from_dict(data, source="(derived configuration)")


def freeze_validation_split(config: Config) -> Config:
    """Make the trainer's random validation split explicit so it no longer depends on ``training.seed``.

    Without ``data.val`` the trainer validates on a random ``val_fraction`` of the
    training slices drawn with ``training.seed``; seed ensembles would then be
    ranked on different slices. This returns a config with that same split
    (drawn with the config's own seed) written out as ``data.train`` /
    ``data.val`` slice selections. Configs with ``data.val`` (or no validation)
    are returned unchanged.
    """
    if config.data.val is not None or config.data.val_fraction <= 0:
        return config
    pairs = training_slices(config)
    if len(pairs) < 2:
        return config
    # The same draw as emseg.data.load_training_data.
    rng = np.random.default_rng(config.training.seed)
    n_val = min(max(1, round(config.data.val_fraction * len(pairs))), len(pairs) - 1)
    order = rng.permutation(len(pairs))
    val = [pairs[i] for i in sorted(order[:n_val].tolist())]
    train = [pairs[i] for i in sorted(order[n_val:].tolist())]
    logger.info("validation split frozen (seed %d): %d training and %d validation slices shared by every member",
                config.training.seed, len(train), len(val))
    return _with_data(config, train, val)


def fold_configs(config: Config, folds: int, *, split: str = "contiguous") -> list[Config]:
    """One configuration per fold of a k-fold cross-validation over the training slices.

    The training slices are the union of the ``data.train`` entries' selected
    slices, in entry order then z order. ``split="contiguous"`` cuts that list
    into ``folds`` consecutive blocks (sizes differ by at most one, larger
    blocks first, as ``numpy.array_split``); ``"interleaved"`` puts slice ``j``
    in fold ``j mod folds``. Fold ``i`` trains on the other folds and validates
    on fold ``i``; ``data.val`` of ``config`` is not used.

    Raises:
        ValueError: fewer than 2 folds, more folds than slices, or an unknown split.
    """
    if split not in FOLD_SPLITS:
        raise ValueError(f"fold split {split!r}: expected one of {', '.join(FOLD_SPLITS)}")
    pairs = training_slices(config)
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    if folds > len(pairs):
        raise ValueError(f"--folds {folds} is more than the {len(pairs)} training slices of data.train")
    index = np.arange(len(pairs))
    blocks = np.array_split(index, folds) if split == "contiguous" else [index[i::folds] for i in range(folds)]
    out = []
    for block in blocks:
        held = set(block.tolist())
        out.append(_with_data(config, [p for j, p in enumerate(pairs) if j not in held],
                              [p for j, p in enumerate(pairs) if j in held]))
    return out


def validation_sources(config: Config) -> list[VolumeSource]:
    """The validation data of a configuration as slice-selecting sources (the trainer's split)."""
    frozen = freeze_validation_split(config)
    return list(frozen.data.val or [])

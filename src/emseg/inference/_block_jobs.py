"""One block's work in the blockwise engine: the picklable job, the per-process caches, ``run_block``.

What a (possibly remote) Dask worker runs for a block: load the predictor once per process, read the
block's input box, predict its labels, write its chunks.  The engine (:mod:`emseg.inference._blockwise`)
marks the block done when this returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emseg._device import cpu_has_native_bf16
from emseg.inference._block_layout import BlockLayout, as_block_predictor, predict_labels_block
from emseg.inference._predictor import load_predictor
from emseg.io import open_image, open_store_array

__all__ = ["BlockJob", "run_block", "write_block"]


@dataclass
class BlockJob:
    """Everything a (possibly remote) worker needs to predict and write one block; picklable."""

    model: str
    model_sha256: str
    input: str
    output: str
    labels_path: str
    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    dtype: str
    is_2d: bool
    predictor_options: dict[str, Any] = field(default_factory=dict)
    loader: Callable[..., Any] | None = None
    threads: int = 1


# ----------------------------------------------------------------- per-process caches (Dask workers)

_PREDICTORS: dict[tuple, Any] = {}
_INPUTS: dict[str, Any] = {}
_OUTPUTS: dict[tuple[str, str], Any] = {}


def _predictor_key(model: str, sha256: str, options: dict[str, Any], loader: Callable[..., Any] | None) -> tuple:
    # precision "auto" follows the CPU check (which EMSEG_NATIVE_BF16 can override), so the key holds its answer
    return (model, sha256, tuple(sorted(options.items())), loader, cpu_has_native_bf16())


def _cached_predictor(model: str, sha256: str, options: dict[str, Any],
                   loader: Callable[..., Any] | None = None) -> Any:
    """The predictor for ``model``, loaded once per process (keyed by path, checksum, options and loader).

    ``loader(model, **options)`` builds it (default :func:`~emseg.inference.load_predictor`; an ensemble
    passes its own), wrapped by :func:`as_block_predictor`.
    """
    key = _predictor_key(model, sha256, options, loader)
    if key not in _PREDICTORS:
        if loader is None:
            loader = load_predictor
        _PREDICTORS[key] = as_block_predictor(loader(model, **options))
    return _PREDICTORS[key]


def _file_resolved_overlap(model: str, sha256: str, options: dict[str, Any], overlap: float) -> None:
    """File the predictor loaded with ``options`` (overlap ``"auto"``) also under the overlap it resolved to.

    A single model's predictor built with ``overlap="auto"`` is the one built with the overlap it resolved
    (the same windows, weights and route), and it has measured the receptive field already: so a later
    request with the resolved options (the route tuner's base) neither loads the model again nor repeats the
    gradient probe.  Only for the default loader: an ensemble's members may resolve their own overlaps.
    """
    key = _predictor_key(model, sha256, options, None)
    if options.get("overlap") != "auto" or key not in _PREDICTORS:
        return
    _PREDICTORS.setdefault(_predictor_key(model, sha256, {**options, "overlap": overlap}, None), _PREDICTORS[key])


def _open_input(path: str) -> Any:
    if path not in _INPUTS:
        _INPUTS[path] = open_image(path)
    return _INPUTS[path].array


def _open_output(store: str, labels_path: str) -> Any:
    key = (store, labels_path)
    if key not in _OUTPUTS:
        _OUTPUTS[key] = open_store_array(store, labels_path)
    return _OUTPUTS[key]


def write_block(array: Any, region: tuple[slice, slice, slice], labels: np.ndarray, is_2d: bool) -> None:
    if is_2d:
        array[region[1:]] = labels[0]
    else:
        array[region] = labels


def run_block(job: BlockJob, index: tuple[int, int, int]) -> tuple[tuple[int, int, int], int]:
    """Predict and write one block in this process (a Dask task); returns ``(index, voxels)``."""
    import torch

    if torch.get_num_threads() != job.threads:
        torch.set_num_threads(job.threads)  # the same on every route: the labels are then bit-identical
    predictor = _cached_predictor(job.model, job.model_sha256, job.predictor_options, job.loader)
    volume = _open_input(job.input)
    layout = BlockLayout(job.shape, job.block)
    region = layout.region(index)
    labels = predict_labels_block(predictor, lambda box: np.asarray(volume[box]), region, job.shape, job.dtype)
    write_block(_open_output(job.output, job.labels_path), region, labels, job.is_2d)
    return index, int(labels.size)

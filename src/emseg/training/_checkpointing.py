"""What a run writes per epoch and reads back on resume: the metrics line, ``last.pt`` and ``model.pt``
(the checkpoint schema is :mod:`emseg.models`'; this module fills it), the random states.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from emseg._version import __version__
from emseg.config import Config
from emseg.data import BatchStream, Normalizer
from emseg.models import MODEL_FILENAME, MODELS, CheckpointError, inference_defaults, load_checkpoint, save_checkpoint
from emseg.training._callbacks import nan_to_none
from emseg.training._loop import Callback, LoopState, TrainingLoop
from emseg.training._run_dir import CONFIG_FILENAME, LAST_FILENAME, append_metrics, describe_differences
from emseg.training._run_dir import network_differences, writing
from emseg.training._spatial import inference_metadata

logger = logging.getLogger(__name__)

__all__ = ["CheckpointSaver", "MetricsLog", "checkpoint_dict", "metrics_line", "random_states",
           "restore_random_states", "resume_state"]


def checkpoint_dict(config: Config, *, backend: str, state: dict, normalizer: Normalizer, in_channels: int,
                    training: dict[str, Any], divisor: int = 16) -> dict[str, Any]:
    """A ``model.pt`` / ``last.pt`` payload: the network spec, classes, normalisation, inference defaults."""
    return {
        "emseg_version": __version__,
        "backend": backend,
        "model": {
            "name": config.model.name,
            "options": config.model.options,
            "in_channels": in_channels,
            "context_slices": config.model.context_slices,
            "spatial_dims": MODELS.get(config.model.name).spatial_dims,
        },
        "classes": list(config.data.classes),
        "ignore_label": config.data.ignore_label,
        "background": config.data.background,
        "normalization": normalizer.to_dict(),
        "inference": {**inference_defaults(divisor=divisor), **inference_metadata(config)},
        "preprocess": config.preprocess.model_dump(mode="json"),
        "state": state,
        "training": training,
    }


def metrics_line(path: Path, record: dict[str, Any]) -> None:
    """Append one epoch's line to ``metrics.jsonl`` (a failed write names the file and says how to resume)."""
    with writing(path, resumable=path.with_name(LAST_FILENAME)):
        append_metrics(path, record)


def random_states(batches: BatchStream, device: torch.device) -> dict[str, Any]:
    """Every random state the next epoch draws from, for ``last.pt`` (numbers as JSON text: safe to load).

    The generator and sampler states are those right after the last batch used (the batch worker may
    have drawn further ahead)."""
    numpy_state, sampler_state = batches.random_state()
    states: dict[str, Any] = {
        "numpy": json.dumps(numpy_state),
        "python": json.dumps(random.getstate()),
        "torch": torch.get_rng_state(),
        "sampler": json.dumps(sampler_state),
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_random_states(states: dict[str, Any], rng: np.random.Generator, sampler: Any, device: torch.device) -> None:
    """Put back what :func:`random_states` recorded."""
    rng.bit_generator.state = json.loads(states["numpy"])
    version, internal, gauss = json.loads(states["python"])
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(states["torch"])
    sampler.load_state_dict(json.loads(states["sampler"]))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def resume_state(config: Config, out_dir: Path) -> dict[str, Any] | None:
    """``last.pt`` of ``out_dir`` checked against ``config`` before anything in the run is touched.

    Returns ``None`` (with a warning) when no epoch finished: the run starts
    from scratch.  Raises ``ValueError`` naming both configurations and the
    differing keys when ``config`` describes another network than the run's,
    or when ``last.pt`` cannot be read.
    """
    last = out_dir / LAST_FILENAME
    if not last.is_file():
        logger.warning("--resume: %s has no %s (no epoch finished, or the run was stopped while writing its first "
                       "checkpoint): starting the run from scratch", out_dir, LAST_FILENAME)
        return None
    try:
        state = load_checkpoint(last)
    except CheckpointError as err:
        raise ValueError(f"cannot resume: {err}. Pass --overwrite instead of --resume to start the run again "
                         f"(this deletes its checkpoints), or choose another --out") from None
    run_config = out_dir / CONFIG_FILENAME
    recorded = state.get("training", {}).get("config")
    if not isinstance(recorded, dict) and run_config.is_file():
        recorded = yaml.safe_load(run_config.read_text())
    diffs = network_differences(recorded or {}, config.model_dump(mode="json"))
    if diffs:
        new = config.source or "the new configuration"
        raise ValueError(
            f"cannot resume {out_dir} with {new}: it describes another network than the run's {run_config} "
            f"({describe_differences(diffs)}). Nothing was changed. Resume with the run's configuration "
            f"(emseg train {run_config} --out {out_dir} --resume), or train the new network into a new --out"
        )
    if (config.training.ema_decay is None) != ("ema" not in state):
        raise ValueError(f"cannot resume {last}: it was trained {'with' if 'ema' in state else 'without'} "
                         f"training.ema_decay; resume with the same setting or start a new run")
    return state


def loop_state(info: dict[str, Any]) -> LoopState:
    """The loop's counters from ``last.pt``'s ``training`` block."""
    best = info.get("best_score", info["best_val_mean_iou"])
    return LoopState(epoch=info["epoch"], iteration=info["iteration"], elapsed_before=info["elapsed_s"],
                     best=-np.inf if best is None else best, best_epoch=info["best_epoch"],
                     best_iou=float("nan") if info["best_val_mean_iou"] is None else info["best_val_mean_iou"],
                     history=list(info.get("history", [])))


class MetricsLog(Callback):
    """One ``metrics.jsonl`` line per epoch (the line is the loop's ``record``, complete once the callbacks
    before this one have added to it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        metrics_line(self.path, loop.record)


class CheckpointSaver(Callback):
    """``last.pt`` after every epoch (weights, optimiser, random states, what the ``resumables`` add) and
    ``model.pt`` when the epoch is the best so far.

    Args:
        run_info: recorded in each checkpoint's ``training`` block (route, budget-aware choices).
        checkpoint: ``checkpoint(training) -> dict``: the payload around the weights and a ``training`` block.
        resumables: callbacks with ``resumable(loop) -> dict`` (weight averaging, semi-supervised teacher).
    """

    def __init__(self, out_dir: Path, *, config: Config, checkpoint: Any, metric: str, has_validation: bool,
                 run_info: dict[str, Any], resumables: list[Any]) -> None:
        self.out_dir, self.config, self.checkpoint, self.metric = out_dir, config, checkpoint, metric
        self.has_validation, self.run_info, self.resumables = has_validation, run_info, resumables

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        state, out_dir = loop.state, self.out_dir
        training = {"epoch": state.epoch, "iteration": state.iteration, "elapsed_s": loop.elapsed(),
                    "best_epoch": state.best_epoch,
                    "best_val_mean_iou": nan_to_none(state.best_iou if self.has_validation else float("nan")),
                    "val_mean_iou": nan_to_none(state.val_iou), "checkpoint_metric": self.metric,
                    "best_score": nan_to_none(state.best), "history": state.history,
                    "config": self.config.model_dump(mode="json"), **self.run_info}
        ckpt = self.checkpoint(training)
        resumable = {"optimizer": loop.optimizer.state_dict(), "rng": random_states(loop.batches, loop.device)}
        for source in self.resumables:
            resumable.update(source.resumable(loop))
        # Order of writes: last.pt first, then model.pt. last.pt is the record of the run: an epoch
        # counts once its last.pt is written (its metrics line before it is dropped on resume
        # otherwise). A kill between the two writes leaves model.pt one best behind, and last.pt then
        # holds that very best epoch (best_epoch == epoch, same weights), so resume and Ctrl-C rewrite
        # model.pt from it (restore_best). The other order could leave a model.pt of an epoch that
        # last.pt never recorded: resume would redo that epoch and, if it scored lower, keep a model.pt
        # whose weights no record describes.
        with writing(out_dir / LAST_FILENAME, resumable=out_dir / LAST_FILENAME):
            save_checkpoint(out_dir / LAST_FILENAME, {**ckpt, **resumable})
        if state.improved:
            with writing(out_dir / MODEL_FILENAME, resumable=out_dir / LAST_FILENAME):
                save_checkpoint(out_dir / MODEL_FILENAME, ckpt)
        history, metric = state.history, self.metric
        logger.info("epoch %d: loss %.4f%s", state.epoch, loop.record["train_loss"],
                    (f", val mean IoU {state.val_iou:.3f}"
                     + (f", {metric} {history[-1]:.4g}" if metric != "val_mean_iou" and history[-1] is not None else "")
                     + f" (best epoch {state.best_epoch})") if self.has_validation else "")

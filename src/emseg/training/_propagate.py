"""Pseudo-label propagation along z (``emseg propagate``): the sequential semi-supervised "4S" scheme.

From the labelled sections of a contiguous stack: train; predict the next ``step`` sections outward on
both sides of every covered run; keep the pixels whose confidence reaches the threshold of their class as
pseudo-labels (the rest ignored); retrain from the current weights (``model.init``) on the real labels
plus all pseudo-labels so far; repeat until the stack (or ``sections``) is covered.

Output folder::

    round-00/run/           the first model (real labels only)
    round-01/run/           each later round's model ...
    round-01/pseudo_labels.tif, confidence.tif, round.json   ... and the sections it added (z order)
    round-01/train_labels.tif   the labels that round's model was trained on (ignore_label elsewhere)
    model.pt                the final model
    labels.tif, confidence.tif  the final model's segmentation of the covered stack (real labels kept)
    propagation.json        written last: rounds, sections covered per round
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emseg._progress import progress_bar
from emseg.config import Config, config_from_dict, deep_merge, load_config
from emseg.data import parse_slices
from emseg.inference import Predictor
from emseg.io import atomic_output, open_image, write_image
from emseg.models import MODEL_FILENAME, load_checkpoint
from emseg.training._trainer import train

logger = logging.getLogger(__name__)

__all__ = ["PropagationResult", "propagate", "next_sections"]

IGNORE_VALUE = 255  # stored in the label files written here (data.ignore_label of the derived configurations)


@dataclass
class PropagationResult:
    """What a propagation produced."""

    out_dir: Path
    model_path: Path
    labels_path: Path
    rounds: list[dict[str, Any]]
    covered: list[int]


def next_sections(covered: set[int], sections: list[int], *, step: int) -> list[int]:
    """The ``step`` sections beyond each end of every run of ``covered`` sections, within ``sections``.

    >>> next_sections({2, 3}, list(range(6)), step=1)
    [1, 4]
    >>> next_sections({2, 3}, list(range(6)), step=2)
    [0, 1, 4, 5]
    """
    allowed, new = set(sections), set()
    frontier = set(covered)
    for _ in range(step):
        grown = {z + d for z in frontier for d in (-1, 1)} & allowed
        grown -= covered | new
        new |= grown
        frontier = grown
    return sorted(new)


def _context(volume: np.ndarray, z: int, context: int) -> np.ndarray:
    if context == 1:
        return volume[z]
    zs = np.clip(np.arange(z - context // 2, z + context // 2 + 1), 0, volume.shape[0] - 1)
    return volume[zs]


def _probabilities(run: Path, volume: np.ndarray, zs: list[int], *, precision: str) -> np.ndarray:
    """``(K, len(zs), Y, X)`` class probabilities of sections ``zs`` by the model of ``run``."""
    predictor = Predictor.from_checkpoint_dict(load_checkpoint(run), precision=precision)
    if getattr(predictor, "spatial_dims", 2) == 3:
        return predictor.predict_proba_volume(volume)[:, zs]
    context = int(getattr(predictor, "context_slices", 1))
    return np.stack([predictor.predict_proba_slice(_context(volume, z, context)) for z in zs], axis=1)


def _write_atomic(path: Path, array: np.ndarray) -> None:
    write_image(path, array, overwrite=True)  # atomic: a crash leaves the old file or none


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def propagate(config: Config | str | os.PathLike, out_dir: str | os.PathLike, *, sections: str | None = None,
              step: int = 1, threshold: float | list[float] = 0.9, max_rounds: int | None = None,
              overwrite: bool = False, progress: bool = True) -> PropagationResult:
    """Propagate the labels of a few sections through a contiguous stack (4S); resumable by running it again.

    Args:
        config: a training configuration whose ``data.train`` is one stack; its ``slices`` are the
            labelled sections.  ``training`` applies to every round (budget per round).
        out_dir: output folder (see the module docstring).
        sections: the sections to cover (``"0:30"``, default the whole stack): a contiguous range holding
            the labelled sections.
        step: sections added on each side of every covered run per round.
        threshold: confidence a pixel's class needs to become a pseudo-label (one value or one per class).
        max_rounds: stop after this many propagation rounds (default: until covered).
        overwrite: start again in a non-empty folder that holds no propagation of this configuration.
        progress: progress bar (round and sections covered).

    Raises:
        ValueError: not one training stack, a non-contiguous range, labelled sections outside it, bad
            thresholds; the message names the option and the fix.
    """
    if not isinstance(config, Config):
        config = load_config(config)
    out_dir = Path(out_dir)
    if len(config.data.train) != 1:
        raise ValueError(f"propagate: data.train must name one stack (image, labels, slices = the labelled "
                         f"sections); got {len(config.data.train)} entries")
    source = config.data.train[0]
    num_classes = len(config.data.classes)
    if num_classes > IGNORE_VALUE:
        raise ValueError(f"propagate: at most {IGNORE_VALUE} classes (label value {IGNORE_VALUE} marks unlabelled pixels)")
    if config.data.ignore_label not in (None, IGNORE_VALUE):
        raise ValueError(f"propagate: data.ignore_label must be {IGNORE_VALUE} or unset, got {config.data.ignore_label}")
    if step < 1:
        raise ValueError(f"--step must be at least 1 section, got {step}")
    values = threshold if isinstance(threshold, list) else [threshold] * num_classes
    if len(values) != num_classes or any(not 0 < v <= 1 for v in values):
        raise ValueError(f"--threshold must be one value in (0, 1] or one per class ({num_classes}), got {threshold}")
    thresholds = np.asarray(values, dtype=np.float32)
    with open_image(source.image) as raw, open_image(source.labels) as lab:
        depth = raw.array.shape[0]
        labelled = parse_slices(source.slices, depth)
        volume = np.asarray(raw.array)
        real = np.asarray(lab.array)
    try:
        span = parse_slices(sections, depth)
    except ValueError as err:
        raise ValueError(f"--range: {err}") from None
    if span != list(range(span[0], span[-1] + 1)):
        raise ValueError(f"--range {sections!r} is not one contiguous run of sections; give e.g. '0:30'")
    outside = [z for z in labelled if z not in span]
    if outside:
        raise ValueError(f"--range {sections!r} leaves out the labelled sections {outside}; widen it")

    state_path = out_dir / "propagation.json"
    signature = {"config": config.model_dump(mode="json"), "sections": span, "step": step, "threshold": values}
    progress_file = out_dir / "rounds.json"
    if out_dir.exists() and any(out_dir.iterdir()):
        recorded = _read_json(progress_file)
        if recorded is None or recorded.get("signature") != signature:
            if not overwrite:
                raise FileExistsError(f"{out_dir} is not empty and holds no propagation of this configuration and "
                                      f"options; choose another --out or pass --overwrite")
            shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = _read_json(progress_file) or {"signature": signature, "rounds": []}
    rounds: list[dict[str, Any]] = record["rounds"]

    labels = np.full(real.shape, IGNORE_VALUE, dtype=np.uint8)
    for z in labelled:
        slab = real[z].astype(np.int64)
        if config.data.ignore_label is not None:
            slab[slab == config.data.ignore_label] = IGNORE_VALUE
        labels[z] = slab.astype(np.uint8)
    covered = set(labelled)
    for done in rounds:  # pseudo-labels of finished rounds, as they were kept
        if done.get("added"):
            labels[done["added"]] = np.asarray(open_image(out_dir / done["dir"] / "pseudo_labels.tif").array)
        covered |= set(done["added"])

    def train_round(index: int, init: Path | None) -> Path:
        folder = out_dir / f"round-{index:02d}"
        folder.mkdir(exist_ok=True)
        labels_file = folder / "train_labels.tif"
        if not labels_file.is_file():
            _write_atomic(labels_file, labels)
        data = config.model_dump(mode="json")
        data["data"]["train"] = [{"image": source.image, "labels": str(labels_file),
                                  "slices": ",".join(str(z) for z in sorted(covered))}]
        data["data"]["ignore_label"] = IGNORE_VALUE
        if init is not None:
            data = deep_merge(data, {"model": {"init": str(init)}})
        run = folder / "run"
        cfg = config_from_dict(data, source=f"of round {index} in {folder}")
        finished = (run / "summary.json").is_file()
        if not finished:  # one progress bar at a time: the propagation's (round, sections covered)
            advance(0, status=f"round {index}: training on {len(covered)} sections")
            train(cfg, run, resume=(run / "last.pt").is_file(), overwrite=not (run / "last.pt").is_file(),
                  progress=False)
        return run

    with progress_bar("Propagating", total=len(span), unit="sections", enabled=progress) as advance:
        advance(0, completed=len(covered & set(span)), status=f"round {len(rounds)}")
        if not rounds:
            train_round(0, Path(config.model.init) if config.model.init else None)
            rounds.append({"round": 0, "dir": "round-00", "added": [], "covered": sorted(covered)})
            _save_rounds(progress_file, record)
        while not set(span) <= covered and (max_rounds is None or len(rounds) - 1 < max_rounds):
            index = len(rounds)
            previous = out_dir / rounds[-1]["dir"] / "run"
            added = next_sections(covered, span, step=step)
            folder = out_dir / f"round-{index:02d}"
            folder.mkdir(exist_ok=True)
            probs = _probabilities(previous, volume, added, precision=config.training.precision)
            confidence = probs.max(axis=0)
            pseudo = probs.argmax(axis=0).astype(np.uint8)
            pseudo[confidence < thresholds[pseudo]] = IGNORE_VALUE
            _write_atomic(folder / "confidence.tif", confidence.astype(np.float32))
            _write_atomic(folder / "pseudo_labels.tif", pseudo)
            labels[added] = pseudo
            covered |= set(added)
            kept = float(np.mean(pseudo != IGNORE_VALUE))
            info = {"round": index, "dir": folder.name, "added": added, "covered": sorted(covered),
                    "confident_fraction": round(kept, 4), "from_model": str(previous)}
            (folder / "round.json").write_text(json.dumps(info, indent=2))
            logger.info("round %d: sections %s pseudo-labelled (%.0f %% of their pixels confident); %d of %d "
                        "sections covered", index, added, 100 * kept, len(covered & set(span)), len(span))
            train_round(index, previous)
            rounds.append(info)
            _save_rounds(progress_file, record)
            advance(0, completed=len(covered & set(span)), status=f"round {index}: {len(covered & set(span))} of "
                                                                   f"{len(span)} sections covered")
    final = out_dir / rounds[-1]["dir"] / "run"
    shutil.copyfile(final / MODEL_FILENAME, out_dir / f".{MODEL_FILENAME}.tmp")
    os.replace(out_dir / f".{MODEL_FILENAME}.tmp", out_dir / MODEL_FILENAME)
    zs = sorted(covered & set(span))
    probs = _probabilities(final, volume, zs, precision=config.training.precision)
    segmentation = probs.argmax(axis=0).astype(np.uint8)
    for i, z in enumerate(zs):  # real labels kept where they exist
        known = labels[z] != IGNORE_VALUE
        if z in labelled:
            segmentation[i][known] = labels[z][known]
    _write_atomic(out_dir / "labels.tif", segmentation)
    _write_atomic(out_dir / "confidence.tif", probs.max(axis=0).astype(np.float32))
    summary = {"rounds": rounds, "sections": zs, "labelled": labelled, "model": str(out_dir / MODEL_FILENAME),
               "labels": str(out_dir / "labels.tif"), "complete": set(span) <= covered}
    with atomic_output(state_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return PropagationResult(out_dir, out_dir / MODEL_FILENAME, out_dir / "labels.tif", rounds, zs)


def _save_rounds(path: Path, record: dict[str, Any]) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2))

"""Corrections as training data and fine-tuning rounds: the human-in-the-loop cycle, kept on disk.

A session is a folder::

    session/
      session.json                    base run, classes, ignore label, rounds
      corrections/001-<image>/        one "Add these slices to training": raw.tif, labels.tif (the corrected
                                      slices only, stacked), info.json (image, slice indices, when)
      round-1/                        a run directory of `emseg train` (config.yaml, model.pt, metrics.jsonl,
                                      summary.json) plus round.json: the model it started from, the
                                      corrections it saw, its validation score
      round-2/ ...

Only the slices the user corrected become training labels (the others stay unlabelled); pixels painted
with the "unsure" label are stored as the ignore label and do not count in the loss. Each round trains
from the current model's weights (``model.init``) on the base run's training data plus every correction so
far (a slice corrected twice counts once, the later correction wins), for a time budget, and is validated
on the base run's validation data, so the rounds' scores compare.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emseg.config import Config, config_from_dict, deep_merge, load_config
from emseg.io import atomic_output, write_image
from emseg.training import Callback, TrainResult, train

logger = logging.getLogger(__name__)

__all__ = ["ActiveSession", "DEFAULT_IGNORE_LABEL"]

#: The ignore label unsure pixels are stored as, when the base run defines none.
DEFAULT_IGNORE_LABEL = 255
SESSION_FILE = "session.json"
CORRECTIONS = "corrections"


def _write_json(path: Path, data: Any) -> None:
    with atomic_output(path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2))


def _base_config_path(run: Path) -> Path:
    run = Path(run)
    folder = run.parent if run.is_file() else run
    config = folder / "config.yaml"
    if not config.is_file():
        raise ValueError(f"{run}: fine-tuning continues a training run, and {config} (the run's configuration, "
                         "naming its training data) is missing; pick the run directory `emseg train` wrote "
                         "(exported .onnx / bioimage.io models and ensembles cannot be fine-tuned here)")
    return config


class ActiveSession:
    """A folder of corrections and fine-tuning rounds started from one trained run (see the module docstring).

    Args:
        folder: the session folder (created if missing).
        base_run: the run directory (or its ``model.pt``) the session starts from; needed to create a
            session, optional to reopen one.
    """

    def __init__(self, folder: str | os.PathLike, *, base_run: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / SESSION_FILE
        if meta_path.is_file():
            self.meta = json.loads(meta_path.read_text())
            if base_run is not None and Path(self.meta["base_run"]).resolve() != self._run_dir(base_run).resolve():
                logger.info("session %s started from %s; keeping that base run (not %s)", self.folder,
                            self.meta["base_run"], base_run)
            return
        if base_run is None:
            raise ValueError(f"{self.folder} is not an emseg session ({SESSION_FILE} missing): give the run "
                             "directory to start from (base_run)")
        run = self._run_dir(base_run)
        config = load_config(_base_config_path(run))
        ignore = config.data.ignore_label
        if ignore is None:
            ignore = DEFAULT_IGNORE_LABEL if len(config.data.classes) < DEFAULT_IGNORE_LABEL else 65535
        self.meta = {"base_run": str(run.resolve()), "classes": list(config.data.classes), "ignore_label": int(ignore),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_json(meta_path, self.meta)

    @staticmethod
    def _run_dir(run: str | os.PathLike) -> Path:
        run = Path(run)
        return run.parent if run.is_file() else run

    # ------------------------------------------------------------------ properties
    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def ignore_label(self) -> int:
        """The label unsure pixels are stored as (the training ``data.ignore_label``)."""
        return int(self.meta["ignore_label"])

    @property
    def base_run(self) -> Path:
        return Path(self.meta["base_run"])

    # ------------------------------------------------------------------ corrections
    def add_corrections(self, image: Any, labels: Any, slices: list[int], *, image_name: str,
                        unsure: int | None = None) -> Path:
        """Store ``slices`` of a corrected labels volume as training labels.

        Args:
            image: raw ``(Z, Y, X)`` volume (or ``(Y, X)`` image) the labels belong to.
            labels: ``(Z, Y, X)`` (or ``(Y, X)``) labels after the user's corrections.
            slices: the corrected slice indices (the others stay unlabelled).
            image_name: a name for the image (the napari layer's), recorded and used in the folder name.
            unsure: the label the user painted where unsure; stored as :attr:`ignore_label`.

        Returns:
            The new ``corrections/NNN-<image>/`` folder.

        Raises:
            ValueError: no slice, a slice out of range, shapes that differ, or a label that is neither a class
                nor the unsure label (the message names the slice and the label).
        """
        image, labels = np.asarray(image), np.asarray(labels)
        if image.ndim == 2:
            image, labels = image[None], labels[None] if labels.ndim == 2 else labels
        if image.shape != labels.shape:
            raise ValueError(f"the labels {labels.shape} do not match the image {image.shape}: correct a labels layer "
                             f"predicted for image {image_name!r}")
        zs = sorted({int(z) for z in slices})
        if not zs:
            raise ValueError("no corrected slice to add: paint corrections in the labels layer first (or name the "
                             "slices)")
        bad = [z for z in zs if not 0 <= z < image.shape[0]]
        if bad:
            raise ValueError(f"slices {bad} are outside the image ({image.shape[0]} slices)")
        k = len(self.classes)
        stored = labels[zs].astype(np.int64)
        if unsure is not None:
            stored[stored == int(unsure)] = self.ignore_label
        wrong = (stored >= k) & (stored != self.ignore_label)
        if wrong.any():
            i, y, x = (int(v[0]) for v in np.nonzero(wrong))
            raise ValueError(f"slice {zs[i]} of {image_name!r} has label {int(stored[i, y, x])} at (y={y}, x={x}), "
                             f"which is neither a class (0..{k - 1}: {', '.join(self.classes)}) nor the unsure "
                             f"label {unsure}: repaint it with a class")
        dtype = np.uint8 if self.ignore_label <= 255 else np.uint16
        entries = self.corrections()
        number = 1 + max((int(e["number"]) for e in entries), default=0)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", image_name).strip("._") or "image"
        folder = self.folder / CORRECTIONS / f"{number:03d}-{safe}"
        with atomic_output(folder, overwrite=False) as tmp:
            Path(tmp).mkdir(parents=True)
            write_image(Path(tmp) / "raw.tif", np.ascontiguousarray(image[zs]))
            write_image(Path(tmp) / "labels.tif", stored.astype(dtype))
            (Path(tmp) / "info.json").write_text(json.dumps({
                "number": number, "image": image_name, "slices": zs, "unsure_pixels": int((stored == self.ignore_label).sum()),
                "added": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))
        logger.info("added %d corrected slice(s) of %s to the training data: %s", len(zs), image_name, folder)
        return folder

    def corrections(self) -> list[dict[str, Any]]:
        """The stored corrections, oldest first: ``info.json`` plus ``folder``."""
        root = self.folder / CORRECTIONS
        found = []
        if root.is_dir():
            for info in sorted(root.glob("*/info.json")):
                found.append({**json.loads(info.read_text()), "folder": str(info.parent)})
        return sorted(found, key=lambda e: int(e["number"]))

    def _correction_sources(self, repeat: int) -> list[dict[str, Any]]:
        """``data.train`` entries of the corrections; a slice corrected again is taken from the later one."""
        entries = self.corrections()
        latest: dict[tuple[str, int], int] = {}
        for e in entries:
            for z in e["slices"]:
                latest[(e["image"], int(z))] = int(e["number"])
        sources = []
        for e in entries:
            keep = [i for i, z in enumerate(e["slices"]) if latest[(e["image"], int(z))] == int(e["number"])]
            if not keep:
                continue
            folder = Path(e["folder"])
            source = {"image": str(folder / "raw.tif"), "labels": str(folder / "labels.tif"),
                      "slices": ",".join(str(i) for i in keep)}
            sources.extend([source] * repeat)
        return sources

    # ------------------------------------------------------------------ rounds
    def rounds(self) -> list[dict[str, Any]]:
        """Finished rounds, oldest first: ``round.json`` (round, init, corrections, scores) plus ``run_dir``."""
        found = []
        for path in self.folder.glob("round-*/round.json"):
            found.append({**json.loads(path.read_text()), "run_dir": str(path.parent)})
        return sorted(found, key=lambda r: int(r["round"]))

    def current_model(self) -> Path:
        """The latest round's ``model.pt``, else the base run's."""
        rounds = self.rounds()
        return Path(rounds[-1]["run_dir"]) / "model.pt" if rounds else self.base_run / "model.pt"

    def round_config(self, init: str | os.PathLike, *, minutes: float, repeat: int = 3, seed: int | None = None,
                     overrides: dict[str, Any] | None = None) -> Config:
        """The configuration of the next round: the base run's, its training data plus the corrections.

        Args:
            init: the model to start from (``model.init``).
            minutes: training budget (``training.max_minutes``).
            repeat: how many times each correction is listed in ``data.train`` (corrections are few slices
                among many; listing them more often samples them more often).
            seed: ``training.seed`` (default: the round number).
            overrides: further keys merged over the configuration (e.g. ``{"training": {"epochs": 3}}``).
        """
        if not minutes > 0:
            raise ValueError(f"fine-tuning minutes must be above 0, got {minutes}")
        if repeat < 1:
            raise ValueError(f"repeat must be at least 1, got {repeat}")
        sources = self._correction_sources(repeat)
        if not sources:
            raise ValueError("no corrections in this session yet: paint corrections on some slices and press "
                             "'Add these slices to training' first")
        base = load_config(_base_config_path(self.base_run)).model_dump(mode="json")
        data = dict(base)
        data["data"] = {**base["data"], "train": list(base["data"]["train"]) + sources, "ignore_label": self.ignore_label}
        data["model"] = {**base["model"], "init": str(Path(init).resolve())}
        data["training"] = {**base["training"], "max_minutes": float(minutes),
                            "seed": int(seed if seed is not None else len(self.rounds()) + 1)}
        if overrides:
            data = deep_merge(data, overrides)
        return config_from_dict(data, base_dir=self.folder, source=f"for a fine-tuning round in {self.folder}")

    def fine_tune(self, *, minutes: float, init: str | os.PathLike | None = None, repeat: int = 3,
                  seed: int | None = None, overrides: dict[str, Any] | None = None,
                  progress: bool = False, callbacks: Sequence[Callback] = ()) -> TrainResult:
        """Train the next round from ``init`` (default: :meth:`current_model`) into ``round-<n>/``.

        ``callbacks`` go to :func:`emseg.train` (e.g. :class:`~emseg.training.StopOnEvent` for a Cancel
        button). A cancelled round is removed (``round-<n>/`` deleted, no ``round.json``): the session
        goes on from the model it had.

        Returns:
            The :class:`~emseg.training.TrainResult` of the round (``stop_reason == "cancelled"`` when
            cancelled); ``round-<n>/round.json`` records a finished one.
        """
        init = Path(init) if init is not None else self.current_model()
        number = 1 + max((int(r["round"]) for r in self.rounds()), default=0)
        config = self.round_config(init, minutes=minutes, repeat=repeat, seed=seed, overrides=overrides)
        out = self.folder / f"round-{number}"
        started = time.perf_counter()
        result = train(config, out, overwrite=out.exists(), progress=progress, callbacks=callbacks)
        if not result.complete:
            shutil.rmtree(out, ignore_errors=True)
            logger.warning("round %d cancelled: %s removed; the current model is still %s", number, out, init)
            return result
        record = {"round": number, "init": str(init), "minutes": float(minutes),
                  "corrections": [{"image": e["image"], "slices": e["slices"], "folder": e["folder"]}
                                  for e in self.corrections()],
                  "best_val_mean_iou": result.best_val_mean_iou, "best_epoch": result.best_epoch,
                  "elapsed_s": round(time.perf_counter() - started, 1),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_json(out / "round.json", record)  # written last: marks the round finished
        logger.info("round %d: validation mean IoU %.4f -> %s", number, result.best_val_mean_iou, out)
        return result

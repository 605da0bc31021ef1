"""A benchmark's files: per-epoch curves, JSON records and arrays written atomically, runs cleared."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from emseg.evaluation import json_safe
from emseg.io import atomic_output, remove_path

logger = logging.getLogger(__name__)


def _read_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl``, one per epoch.

    A run killed after an epoch's line was appended but before its ``last.pt``
    was saved repeats that epoch when it resumes: the later line (the epoch the
    model comes from) wins. A line cut short by the kill is skipped.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    by_epoch: dict[Any, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s: skipping a line cut short (an interrupted run?): %.60s", path, line)
            continue
        by_epoch.pop(record.get("epoch"), None)
        by_epoch[record.get("epoch")] = {k: record.get(k) for k in ("epoch", "elapsed_s", "val_mean_iou", "train_loss")}
    return list(by_epoch.values())


def _read_json(path: Path) -> Any:
    """The JSON content of ``path``, or ``None`` when it is missing or cut short (a killed writer)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _quantise(probs: np.ndarray) -> np.ndarray:
    """Probabilities to uint8 (1/255 steps) for the on-disk copy ``test_probabilities.npy``."""
    return np.round(np.clip(probs, 0, 1) * 255).astype(np.uint8)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_output(path, overwrite=True) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def _write_json(path: Path, data: Any) -> None:
    with atomic_output(path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def _clear_run(run_dir: Path) -> None:
    if run_dir.exists():
        for child in run_dir.iterdir():
            remove_path(child)

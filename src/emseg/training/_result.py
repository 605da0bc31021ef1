"""How a training run ends: :class:`TrainResult`, ``summary.json``, and the two ways of stopping early
that leave a resumable run (Ctrl-C: :class:`TrainingInterrupted`; a stop callback: ``"cancelled"``)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emseg.models import MODEL_FILENAME
from emseg.training._callbacks import nan_to_none
from emseg.training._run_dir import LAST_FILENAME, SUMMARY_FILENAME, replace_text

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "TrainingInterrupted", "cancelled", "finish"]


@dataclass
class TrainResult:
    """What a training run produced.

    ``stop_reason``: ``"epochs"``, ``"time limit"``, ``"early stopping"``, ``"abandoned"``, ``"fitted"``
    (random forest) or ``"cancelled"`` (a stop callback: no ``summary.json``; ``model.pt`` is the best
    epoch so far, absent when no epoch finished; ``resume=True`` continues the run).
    """

    run_dir: Path
    model_path: Path
    best_epoch: int
    best_val_mean_iou: float
    epochs: int
    elapsed_s: float
    stop_reason: str
    checkpoint_metric: str = "val_mean_iou"
    best_metric: float = float("nan")

    @property
    def complete(self) -> bool:
        """The run ended by its own rules (not cancelled from outside) and wrote ``summary.json``."""
        return self.stop_reason != "cancelled"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: ``model.pt`` (best so far) and ``last.pt`` are kept and resumable.

    ``run_dir``, ``model_path`` and ``last_path`` say where; ``epochs`` is the
    number of finished epochs, ``best_epoch`` the one in ``model.pt``.
    """

    def __init__(self, run_dir: Path, *, epochs: int, best_epoch: int) -> None:
        self.run_dir, self.epochs, self.best_epoch = Path(run_dir), epochs, best_epoch
        self.model_path, self.last_path = self.run_dir / MODEL_FILENAME, self.run_dir / LAST_FILENAME
        super().__init__(f"training interrupted after epoch {epochs}: best checkpoint {self.model_path} "
                         f"(epoch {best_epoch}), resumable state {self.last_path}")


def finish(out_dir: Path, *, best_epoch: int, best: float, epochs: int, elapsed: float, reason: str,
           metric: str = "val_mean_iou", best_metric: float | None = None,
           calibration: dict[str, Any] | None = None, run_info: dict[str, Any] | None = None) -> TrainResult:
    """Write ``summary.json`` (last: it marks the run finished) and return the result."""
    best_metric = best if best_metric is None else best_metric
    result = TrainResult(out_dir, out_dir / MODEL_FILENAME, best_epoch, best, epochs, elapsed, reason, metric, best_metric)
    summary = {"model": str(result.model_path), "best_epoch": best_epoch, "best_val_mean_iou": nan_to_none(best),
               "checkpoint_metric": metric, "best_metric": nan_to_none(best_metric),
               "epochs": epochs, "elapsed_s": round(elapsed, 1), "stop_reason": reason}
    if calibration is not None:
        summary["calibration"] = calibration
    summary.update(run_info or {})  # how the run trained: route, budget-aware choices
    replace_text(out_dir / SUMMARY_FILENAME, json.dumps(summary, indent=2))
    logger.info("training stopped (%s) after %d epochs, %.0f s; best epoch %d, val mean IoU %s -> %s",
                reason, epochs, elapsed, best_epoch, f"{best:.3f}" if not math.isnan(best) else "n/a", result.model_path)
    return result


def cancelled(out_dir: Path, *, best_epoch: int, best: float, epochs: int, elapsed: float, metric: str,
              best_metric: float) -> TrainResult:
    """A run stopped from outside: no ``summary.json`` (a stale one of an earlier, resumed run is removed),
    so nothing takes it for finished (ensembles resume it, sessions do not offer it); ``model.pt`` and
    ``last.pt`` stay as the last finished epoch left them."""
    (out_dir / SUMMARY_FILENAME).unlink(missing_ok=True)
    if epochs:
        logger.warning("training cancelled after epoch %d: best checkpoint %s (epoch %d), resumable state %s; "
                       "no summary.json (the run is not finished)", epochs, out_dir / MODEL_FILENAME, best_epoch,
                       out_dir / LAST_FILENAME)
    else:
        logger.warning("training cancelled before the first epoch finished: no checkpoint in %s", out_dir)
    return TrainResult(out_dir, out_dir / MODEL_FILENAME, best_epoch, best, epochs, elapsed, "cancelled", metric,
                       best_metric)

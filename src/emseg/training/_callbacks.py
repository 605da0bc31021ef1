"""The callbacks of the training loop: stopping rules, weight averaging, the semi-supervised term,
validation and the progress bar (checkpoints and the metrics log: ``_checkpointing``; calibration:
``_calibration``).

Public: :class:`StopWhen` and :class:`StopOnEvent` end a run from outside (a GUI's Cancel button, another
thread) cleanly at the next step, with ``stop_reason == "cancelled"``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from emseg._progress import progress_bar
from emseg.training._ema import WeightAverage
from emseg.training._loop import Callback, TrainingLoop
from emseg.training._semi import SemiSupervised
from emseg.training._validation import validate

logger = logging.getLogger(__name__)

__all__ = ["CANCELLED", "EarlyStopping", "ProgressBar", "SemiSupervisedTerm", "StopOnEvent", "StopWhen", "TimeBudget",
           "Validation", "WeightAveraging", "early_stop", "nan_to_none"]

#: ``stop_reason`` of a run stopped from outside (:class:`StopWhen`, :class:`StopOnEvent`).
CANCELLED = "cancelled"


def nan_to_none(value: float | None) -> float | None:
    """A number for JSON: NaN (and None) as ``None``."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


class StopWhen(Callback):
    """Cancel the run before the next step once ``should_stop()`` returns true.

    The epoch in progress is dropped (not validated, not saved): ``model.pt`` (best epoch so far) and
    ``last.pt`` stay those of the last finished epoch, so ``resume=True`` continues the run exactly as if
    it had never been stopped. The run ends with ``stop_reason == "cancelled"`` and writes no
    ``summary.json`` (that file marks a finished run).

    Example::

        stop = threading.Event()
        emseg.train("train.yaml", "run", callbacks=[StopOnEvent(stop)])  # stop.set() from another thread
    """

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        if not callable(should_stop):
            raise ValueError(f"StopWhen needs a function without arguments returning True to stop, got {should_stop!r}")
        self.should_stop = should_stop

    def before_step(self, loop: TrainingLoop) -> None:
        if self.should_stop():
            logger.warning("training cancelled after epoch %d (step %d): the epoch in progress is dropped",
                           loop.state.epoch, loop.state.iteration)
            loop.stop(CANCELLED, finish_epoch=False)


class StopOnEvent(StopWhen):
    """Cancel the run at the next step once ``event`` (a :class:`threading.Event`) is set (see :class:`StopWhen`)."""

    def __init__(self, event: threading.Event) -> None:
        if not hasattr(event, "is_set"):
            raise ValueError(f"StopOnEvent needs a threading.Event, got {type(event).__name__}")
        super().__init__(event.is_set)
        self.event = event


class TimeBudget(Callback):
    """``training.max_minutes``: stop before a step that would leave too little time for the last
    validation (and about half as much again for the calibration); the epoch is still validated and saved."""

    def __init__(self, budget_s: float, *, calibrate: bool) -> None:
        self.budget_s, self.calibrate = budget_s, calibrate

    def before_step(self, loop: TrainingLoop) -> None:
        if loop.elapsed() + loop.state.val_seconds * (1.5 if self.calibrate else 1.0) >= self.budget_s:
            loop.stop("time limit")


def early_stop(tc: Any, *, epoch: int, best_epoch: int, val_iou: float | None) -> str | None:
    """``"early stopping"`` (patience), ``"abandoned"`` (Guay's rule) or ``None`` to go on."""
    if tc.early_stopping_patience is not None and epoch - best_epoch >= tc.early_stopping_patience:
        logger.info("no improvement for %d epochs: early stopping", epoch - best_epoch)
        return "early stopping"
    rule = tc.abandon_below
    if rule is not None and val_iou is not None and epoch == rule.epochs and not (val_iou >= rule.score):
        logger.warning("validation mean IoU %.3f < %.3f after %d epochs: run abandoned", val_iou, rule.score, epoch)
        return "abandoned"
    return None


class EarlyStopping(Callback):
    """``training.early_stopping_patience`` and ``training.abandon_below`` (Guay et al.'s rule: abandon a run
    whose validation mean IoU is below a score after N epochs); not consulted once the run is stopping."""

    def __init__(self, tc: Any, *, has_validation: bool) -> None:
        self.tc, self.has_validation = tc, has_validation

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        if loop.stop_reason is not None:
            return
        state = loop.state
        reason = early_stop(self.tc, epoch=state.epoch, best_epoch=state.best_epoch,
                            val_iou=state.val_iou if self.has_validation else None)
        if reason:
            loop.stop(reason)


class WeightAveraging(Callback):
    """``training.ema_decay``: the exponential moving average of the weights, updated after every step."""

    def __init__(self, ema: WeightAverage) -> None:
        self.ema = ema

    def after_step(self, loop: TrainingLoop) -> None:
        self.ema.update(loop.model)

    def resumable(self, loop: TrainingLoop) -> dict[str, Any]:
        """For ``last.pt``: ``state`` holds the average; the optimiser goes on from the raw weights."""
        return {"train_state": loop.model.state_dict(), "ema": self.ema.state_dict()}


class SemiSupervisedTerm(Callback):
    """``training.semi_supervised``: the unlabelled term added to each step's loss, the teacher's update
    after the step, the term's means in the epoch's metrics line."""

    def __init__(self, semi: SemiSupervised) -> None:
        self.semi = semi

    def on_loss(self, loop: TrainingLoop, loss: torch.Tensor) -> torch.Tensor:
        return loss + self.semi.loss(loop.model, fraction=loop.fraction_done())

    def after_step(self, loop: TrainingLoop) -> None:
        self.semi.update(loop.model)

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        loop.record.update(self.semi.metrics())

    def resumable(self, loop: TrainingLoop) -> dict[str, Any]:
        return {"semi": self.semi.state_dict()}


class Validation(Callback):
    """Score the validation data after each epoch; track the best epoch by the checkpoint metric.

    Without validation data the lowest training loss is the best. ``keep_scores``: keep the best epoch's
    validation log-probabilities (``best_scores``) for the calibration at the end.
    """

    def __init__(self, predictor: Any, val: Any, *, num_classes: int, background: int | None, loss: Any,
                 weight_maps: Any, seed: int, metric: str, mode: str, keep_scores: bool) -> None:
        self.predictor, self.val, self.num_classes, self.background = predictor, val, num_classes, background
        self.loss, self.weight_maps, self.seed, self.metric, self.mode = loss, weight_maps, seed, metric, mode
        self.keep_scores = keep_scores
        self.best_scores: list[np.ndarray] | None = None

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        state, record = loop.state, loop.record
        val_iou = float("nan")
        kept: list[np.ndarray] | None = None
        if len(self.val):
            t0 = time.perf_counter()
            loop.model.eval()
            kept = [] if self.keep_scores else None
            result, scores = validate(self.predictor, self.val, num_classes=self.num_classes, background=self.background,
                                      loss=self.loss, weight_maps=self.weight_maps,
                                      rng=np.random.default_rng([self.seed, state.epoch]), keep=kept)
            state.val_seconds = time.perf_counter() - t0
            val_iou = result.mean_iou
            value = scores[self.metric]
            score = value if self.mode == "max" else -value
            record.update(val_mean_iou=nan_to_none(val_iou),
                          val_mean_iou_foreground=nan_to_none(result.mean_iou_foreground),
                          val_iou={c: nan_to_none(v["iou"]) for c, v in result.per_class.items()},
                          **{k: nan_to_none(v) for k, v in scores.items() if k != "val_mean_iou"})
            state.history.append(nan_to_none(value))
        else:
            score = -float(np.mean(loop.losses))  # no validation data: keep the lowest training loss
            state.history.append(-score)
        state.val_iou = val_iou
        state.improved = not math.isnan(score) and score > state.best
        if state.improved:
            state.best, state.best_epoch, state.best_iou = score, state.epoch, val_iou
            self.best_scores = kept


class ProgressBar(Callback):
    """The rich progress bar (percent of the run), quiet off a terminal or with ``progress=False``."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._stack: contextlib.ExitStack | None = None
        self._advance: Callable[..., None] = lambda *args, **kwargs: None

    def on_train_start(self, loop: TrainingLoop) -> None:
        self._stack = contextlib.ExitStack()
        self._advance = self._stack.enter_context(progress_bar("Training", total=100, unit="%", enabled=self.enabled))

    def after_step(self, loop: TrainingLoop) -> None:
        self._advance(completed=100 * loop.fraction_done(),
                      status=f"epoch {loop.state.epoch + 1} loss {np.mean(loop.losses):.3f}")

    def on_exit(self, loop: TrainingLoop) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

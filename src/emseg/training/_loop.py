"""The training loop: steps and epochs, with everything else attached as callbacks.

In the spirit of MONAI's ``SupervisedTrainer(..., train_handlers=[...])``: :class:`TrainingLoop` only draws
batches, sets the learning rate, runs the forward and backward pass and counts steps and epochs.
Checkpoints, the metrics log, validation, early stopping, the time budget, weight averaging, the
semi-supervised term, the progress bar and calibration are :class:`Callback` objects
(``emseg.training._callbacks``, ``_checkpointing``, ``_calibration``), called in list order at fixed
points:

``on_train_start`` -> per epoch: ``on_epoch_start`` -> per step: ``before_step`` (may stop the run),
``on_loss`` (may add terms), ``after_step`` -> ``on_epoch_end`` (fills ``loop.record``) -> after the
last epoch: ``on_train_end`` (called by the trainer once the run is known to have ended normally);
``on_exit`` always, also on errors.

A callback stops the run with :meth:`TrainingLoop.stop`: with ``finish_epoch=True`` (time limit, early
stopping) the epoch in progress is still validated and saved; with ``finish_epoch=False`` (cancelled) it
is dropped at once, so ``last.pt`` stays the state at the end of the last finished epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from emseg._device import autocast
from emseg.data import BatchStream

__all__ = ["Callback", "LoopState", "TrainingLoop"]


class Callback:
    """Something attached to :class:`TrainingLoop`; every hook is optional (the defaults do nothing).

    Subclass it and pass instances to :func:`emseg.train` (``callbacks=[...]``): they run after the
    built-in ones. Hooks get the loop; read ``loop.state`` (epoch, iteration, best epoch ...),
    ``loop.record`` (the epoch's metrics line, in ``on_epoch_end``) and call ``loop.stop(reason)``.
    """

    def on_train_start(self, loop: TrainingLoop) -> None:
        """Before the first step (also of a resumed run)."""

    def on_epoch_start(self, loop: TrainingLoop) -> None:
        """Before the first step of an epoch (the model is in training mode)."""

    def before_step(self, loop: TrainingLoop) -> None:
        """Before each step; ``loop.stop(...)`` here ends the run before the step."""

    def on_loss(self, loop: TrainingLoop, loss: torch.Tensor) -> torch.Tensor:
        """The step's loss before ``backward``; return it, or it plus further terms."""
        return loss

    def after_step(self, loop: TrainingLoop) -> None:
        """After the optimiser step (``loop.state.iteration`` counts it already)."""

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        """After an epoch's last step; ``loop.record`` is its metrics line (callbacks add to it in order)."""

    def on_train_end(self, loop: TrainingLoop) -> None:
        """After the last epoch of a run that ended normally (not cancelled, at least one epoch)."""

    def on_exit(self, loop: TrainingLoop) -> None:
        """When the loop is left for any reason (errors and Ctrl-C included): release what was opened."""


@dataclass
class LoopState:
    """The counters a run carries from epoch to epoch (and ``last.pt`` records for resuming).

    ``best`` is the checkpoint score (higher is better: the metric, or its negative for a metric to
    minimise), ``best_iou`` the validation mean IoU of the best epoch, ``history`` the checkpoint metric
    per epoch (plateau schedule).
    """

    epoch: int = 0
    iteration: int = 0
    elapsed_before: float = 0.0
    best: float = -math.inf
    best_epoch: int = 0
    best_iou: float = float("nan")
    history: list[float | None] = field(default_factory=list)
    val_seconds: float = 0.0  #: time of the last validation (the time budget keeps that much)
    improved: bool = False  #: the epoch just ended is the new best
    val_iou: float = float("nan")  #: validation mean IoU of the epoch just ended


class TrainingLoop:
    """Epochs of ``iterations_per_epoch`` optimiser steps on batches of ``batches``.

    Args:
        model: the network trained (in place).
        optimizer: its optimiser; the loop sets every group's learning rate before each step.
        batches: the stream of ``(x, y, weight_map)`` batches.
        criterion: ``criterion(logits) -> loss function``, called once with the first output (multi-head
            models wrap the base loss per head); the loss is called as ``loss(logits, target, weight_map=)``.
        prepare_input: the route's input conversion (memory format) of a batch tensor.
        match_target: ``match_target(logits, y)``: the target (or weight map) matched to the output heads.
        learning_rate: ``learning_rate(fraction, iteration, plateau) -> lr``.
        plateau: ``plateau(history) -> factor``, once per epoch.
        epochs, iterations_per_epoch: the planned length; ``budget_s``: the time budget in seconds
            (``fraction_done`` is the larger of time and steps done).
        device, dtype: where and in which autocast precision the forward pass runs.
        callbacks: attached in this order.
        state: the counters to start from (a resumed run's), else a fresh :class:`LoopState`.
        record_fields: fixed fields of every metrics line, after the training loss (e.g. the route).
    """

    def __init__(self, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: BatchStream,
                 criterion: Callable[[Any], Callable[..., torch.Tensor]], prepare_input: Callable[[torch.Tensor], torch.Tensor],
                 match_target: Callable[[Any, torch.Tensor], Any], learning_rate: Callable[[float, int, float], float],
                 plateau: Callable[[list[float | None]], float], epochs: int, iterations_per_epoch: int,
                 budget_s: float, device: torch.device, dtype: torch.dtype | None,
                 callbacks: Sequence[Callback] = (), state: LoopState | None = None,
                 record_fields: dict[str, Any] | None = None) -> None:
        self.model, self.optimizer, self.batches = model, optimizer, batches
        self._make_criterion, self.criterion = criterion, None
        self.prepare_input, self.match_target = prepare_input, match_target
        self.learning_rate, self.plateau = learning_rate, plateau
        self.epochs, self.iterations_per_epoch, self.budget_s = epochs, iterations_per_epoch, budget_s
        self.device, self.dtype = device, dtype
        self.callbacks = list(callbacks)
        self.record_fields = dict(record_fields or {})
        self.state = state or LoopState()
        self.start = time.perf_counter() - self.state.elapsed_before
        self.losses: list[float] = []  #: the training losses of the epoch in progress
        self.record: dict[str, Any] = {}  #: the metrics line of the epoch just ended
        self.stop_reason: str | None = None  #: set by :meth:`stop`
        self.finish_epoch = True
        self._plateau_factor = 1.0

    # ------------------------------------------------------------------ control
    def stop(self, reason: str, *, finish_epoch: bool = True) -> None:
        """End the run: before the next step (``finish_epoch=False``: drop the epoch in progress) or after
        the epoch that is ending. The first reason given is kept."""
        if self.stop_reason is None:
            self.stop_reason, self.finish_epoch = reason, finish_epoch

    @property
    def cancelled(self) -> bool:
        """The run was stopped without finishing its epoch (``stop(..., finish_epoch=False)``)."""
        return self.stop_reason is not None and not self.finish_epoch

    def elapsed(self) -> float:
        """Seconds of training, those before a resume included."""
        return time.perf_counter() - self.start

    def fraction_done(self) -> float:
        """How far the run is: the larger of the time used and the steps done, in ``[0, 1]``."""
        # the first step starts the schedule at 0, not at the milliseconds of set-up on the clock, so that
        # a run bounded by epochs (not by time) takes the same steps every time, resumed or not
        if self.state.iteration == 0:
            return 0.0
        total = self.epochs * self.iterations_per_epoch
        return min(1.0, max(self.elapsed() / self.budget_s, self.state.iteration / total))

    def _call(self, hook: str) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self)

    # ------------------------------------------------------------------ the loop
    def run(self) -> str:
        """Train until the planned epochs are done or a callback stops the run; returns the stop reason."""
        state = self.state
        self.start = time.perf_counter() - state.elapsed_before
        try:
            self._call("on_train_start")
            while state.epoch < self.epochs:
                if not self.epoch() or self.stop_reason is not None:
                    break
        finally:
            self._call("on_exit")
        return self.stop_reason or "epochs"

    def end(self) -> None:
        """Call the ``on_train_end`` hooks (the trainer does, once the run is known to have ended normally)."""
        self._call("on_train_end")

    def epoch(self) -> bool:
        """One epoch; ``False`` when no step was taken or the epoch was dropped (nothing recorded)."""
        self.model.train()
        self.losses = []
        self._plateau_factor = self.plateau(self.state.history)
        self._call("on_epoch_start")
        for _ in range(self.iterations_per_epoch):
            for callback in self.callbacks:
                callback.before_step(self)
                if self.stop_reason is not None:
                    break
            if self.stop_reason is not None:
                break
            self.step()
        if not self.losses or self.cancelled:
            return False
        self.state.epoch += 1
        self.record = {"epoch": self.state.epoch, "iteration": self.state.iteration, "elapsed_s": round(self.elapsed(), 2),
                       "lr": self.optimizer.param_groups[0]["lr"], "train_loss": float(np.mean(self.losses)), **self.record_fields}
        self._call("on_epoch_end")
        return True

    def step(self) -> float:
        """One optimiser step on the next batch; returns its loss."""
        state = self.state
        lr = self.learning_rate(self.fraction_done(), state.iteration, self._plateau_factor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y, w = self.batches.next()
        x, y = self.prepare_input(torch.from_numpy(x).to(self.device)), torch.from_numpy(y).to(self.device)
        wmap = torch.from_numpy(w).to(self.device) if w is not None else None
        with autocast(self.device, self.dtype):
            logits = self.model(x)
        if self.criterion is None:
            self.criterion = self._make_criterion(logits)
        loss = self.criterion(logits, self.match_target(logits, y),
                              weight_map=None if wmap is None else self.match_target(logits, wmap))
        for callback in self.callbacks:
            loss = callback.on_loss(self, loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        value = loss.item()
        self.losses.append(value)
        state.iteration += 1
        self._call("after_step")
        return value

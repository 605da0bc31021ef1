"""The training route: precision, memory format, ``torch.compile`` and torch threads, chosen by timing.

At the start of ``emseg train`` (``training.route: auto``, the default) a short
probe times a few optimiser steps of the configured network on random input of
the training batch's shape, one route after another, and keeps the fastest:

1. precision: fp32, and bf16 where the machine has it natively (a GPU, or a CPU
   with AVX512-BF16 / AMX; ``emseg._device.cpu_has_native_bf16``) and
   ``training.precision`` is ``auto``; ``training.precision: fp32`` or ``bf16``
   leaves only that one;
2. channels-last memory format on / off, on the faster precision;
3. torch threads: the default count and half of it (when ``training.num_threads``
   is not set; the background batch worker, ``training.prefetch``, needs a core too);
4. ``torch.compile`` only when the budget is long enough for its set-up to pay
   off (:data:`COMPILE_MIN_MINUTES`): the set-up is measured, and the compiled
   model is kept only if the budget then buys more steps than without it.

The probe works on the real model but restores its weights (and batch-norm
statistics) and the global torch random state afterwards, so a run takes the
same optimiser steps whichever route wins (up to floating point). Its seconds
per step per route, and the winner, are logged and stored in ``config.yaml``
(``training.route`` stays as configured), in each ``metrics.jsonl`` line
(``route``), in ``summary.json`` and in the checkpoints (``training.route``);
``--resume`` reuses the recorded route without probing.

Route names: ``PRECISION[-cl][-compile][-tN]``, e.g. ``bf16-cl-t2``
(:func:`emseg.config.parse_route` checks them).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from emseg._device import autocast, resolve_precision
from emseg.config import parse_route

logger = logging.getLogger(__name__)

__all__ = ["COMPILE_MIN_MINUTES", "Route", "RouteChoice", "choose_route"]

#: ``torch.compile`` is only probed (on a CPU) when ``training.max_minutes`` is at least this: its set-up
#: (first compiled step) took 284 s for the default U-Net (batch 8, 256 x 256, bf16) on the shared 2-core
#: development machine, against 4.9 s per eager step (docs/BENCHMARKS.md): it only pays off, if at all,
#: over long budgets.
COMPILE_MIN_MINUTES = 60.0
#: On a GPU (set-up of a minute or two, not measured here: no GPU was lent to issue 22).
COMPILE_MIN_MINUTES_GPU = 10.0
#: Timed steps per route (after one warm-up step); the fastest of them counts (others' load adds noise).
PROBE_STEPS = 2
#: Share of the budget the probe may take (at most :data:`PROBE_MAX_SECONDS`), compile set-up aside: a
#: candidate is only timed while the probe is within it (the first, ``precision: auto``, always is).
PROBE_FRACTION = 0.03
PROBE_MAX_SECONDS = 60.0
#: A candidate replaces the best route so far only when it is this much faster (timings of a few steps
#: vary; a near-tie would make two runs of one configuration train differently for no gain).
MIN_GAIN = 0.05
#: ``EMSEG_TRAINING_PROBE=0``: ``route: auto`` means what ``precision: auto`` means, without a probe
#: (no channels-last, torch's threads): the same route on every run, as before the probe existed. The
#: test suite sets it so that runs it compares bit for bit do not depend on the machine's load.
PROBE_ENV = "EMSEG_TRAINING_PROBE"
#: A warm-up step slower than this is followed by one timed step only.
SLOW_STEP_S = 1.0


@dataclass(frozen=True)
class Route:
    """One way of running training steps."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    threads: int = 1

    @classmethod
    def parse(cls, name: str) -> Route:
        parts = parse_route(name)
        return cls(parts["precision"], parts["channels_last"], parts["compile"],
                   parts["threads"] or torch.get_num_threads())

    @property
    def name(self) -> str:
        return (self.precision + ("-cl" if self.channels_last else "") + ("-compile" if self.compile else "")
                + f"-t{self.threads}")

    def dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype of this route (``None``: plain fp32)."""
        return None if self.precision == "fp32" else resolve_precision("bf16", device)

    def memory_format(self, ndim: int) -> torch.memory_format:
        if not self.channels_last:
            return torch.contiguous_format
        return torch.channels_last_3d if ndim == 5 else torch.channels_last

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in this route's memory format."""
        return x.contiguous(memory_format=self.memory_format(x.ndim)) if self.channels_last else x

    def apply(self, model: nn.Module, ndim: int) -> None:
        """Put ``model`` on this route in place (threads, memory format, compile): parameters keep their
        identity and ``state_dict`` its keys."""
        torch.set_num_threads(self.threads)
        model.to(memory_format=self.memory_format(ndim))
        if self.compile:
            model.compile()
        else:
            _uncompile(model)


def _uncompile(model: nn.Module) -> None:
    # nn.Module.compile() sets this attribute; None restores the eager forward
    if getattr(model, "_compiled_call_impl", None) is not None:
        model._compiled_call_impl = None


@dataclass
class RouteChoice:
    """The route a run trains with, and why."""

    route: Route
    source: str  # "probe" | "configured" | "resumed" | "default (EMSEG_TRAINING_PROBE=0)"
    seconds_per_step: dict[str, float] = field(default_factory=dict)
    compile_setup_s: float | None = None
    probe_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.route.name, "source": self.source,
                               "seconds_per_step": {k: round(v, 4) for k, v in self.seconds_per_step.items()},
                               "probe_s": round(self.probe_s, 2)}
        if self.compile_setup_s is not None:
            out["compile_setup_s"] = round(self.compile_setup_s, 1)
        return out

    def describe(self) -> str:
        if self.source != "probe":
            return f"training route {self.route.name} ({self.source})"
        times = ", ".join(f"{k} {v:.3g} s" for k, v in sorted(self.seconds_per_step.items(), key=lambda kv: kv[1]))
        return f"training route {self.route.name} (probe {self.probe_s:.1f} s; seconds per step: {times})"


def _candidate_precisions(precision: str, device: torch.device) -> list[str]:
    """The precisions to time, what ``precision: auto`` means here first (the fallback of a short probe)."""
    if precision in ("fp32", "bf16"):
        return [precision]
    native = resolve_precision("auto", device) == torch.bfloat16
    return ["bf16", "fp32"] if native else ["fp32"]


def _candidate_threads(num_threads: int | None, device: torch.device) -> list[int]:
    n = num_threads or torch.get_num_threads()
    if num_threads or device.type != "cpu" or n < 2:
        return [n]
    return [n, n // 2]


def _time_steps(model: nn.Module, route: Route, x: torch.Tensor, device: torch.device, steps: int) -> tuple[float, float]:
    """(first step, fastest of ``steps`` further steps) in seconds, with a throwaway optimiser."""
    route.apply(model, x.ndim)
    xr = route.prepare_input(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-12)
    dtype = route.dtype(device)
    times: list[float] = []
    while len(times) < steps + 1:
        if len(times) == 1 and times[0] > SLOW_STEP_S:  # slow steps: one timed step after the warm-up
            steps = 1
        times.append(synthetic_step(model, xr, optimizer, device, dtype))
    return times[0], min(times[1:])


def synthetic_step(model: nn.Module, x: torch.Tensor, optimizer: torch.optim.Optimizer, device: torch.device,
                   dtype: torch.dtype | None) -> float:
    """Seconds of one optimiser step on ``x`` (a stand-in loss on every output): what timing probes measure."""
    t0 = time.perf_counter()
    with autocast(device, dtype):
        out = model(x)
    outs = list(out.values()) if isinstance(out, dict) else [out]
    loss = sum(o.float().square().mean() for o in outs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def choose_route(model: nn.Module, *, input_shape: tuple[int, ...], device: torch.device, configured: str,
                 precision: str, num_threads: int | None, budget_s: float, recorded: dict[str, Any] | None = None,
                 steps: int = PROBE_STEPS) -> RouteChoice:
    """Pick the training route for ``model`` and put the model on it (in place).

    Args:
        model: the network, on ``device``, before its optimiser is built.
        input_shape: the training batch ``(B, C, [Z,] Y, X)``.
        configured: ``training.route`` (``"auto"`` or a route name).
        precision, num_threads: ``training.precision`` / ``training.num_threads``: limit the candidates.
        budget_s: ``training.max_minutes`` in seconds (sizes the probe, decides on compile).
        recorded: the route of the run being resumed (``training.route`` of ``last.pt``): reused.
    """
    ndim = len(input_shape)
    if recorded is not None:
        route = Route.parse(recorded["name"])
        route.apply(model, ndim)
        return RouteChoice(route, "resumed", dict(recorded.get("seconds_per_step", {})),
                           recorded.get("compile_setup_s"), 0.0)
    if configured != "auto":
        route = Route.parse(configured)
        route.apply(model, ndim)
        return RouteChoice(route, "configured")
    if os.environ.get(PROBE_ENV, "1").strip() == "0":
        route = Route(_candidate_precisions(precision, device)[0], False, False,
                      _candidate_threads(num_threads, device)[0])
        route.apply(model, ndim)
        return RouteChoice(route, f"default ({PROBE_ENV}=0)")
    start = time.perf_counter()
    probe_budget = min(PROBE_MAX_SECONDS, PROBE_FRACTION * budget_s)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(input_shape, generator=generator).to(device)
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    model.train()
    timings: dict[str, float] = {}
    compile_setup = None

    cost = [0.0]  # seconds the first route's measurement took: what one more is expected to take

    def measure(route: Route) -> float:
        if route.name not in timings:
            t0 = time.perf_counter()
            timings[route.name] = _time_steps(model, route, x, device, steps)[1]
            cost[0] = cost[0] or time.perf_counter() - t0
        return timings[route.name]

    def over_budget() -> bool:
        return time.perf_counter() - start + cost[0] > probe_budget

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        precisions = _candidate_precisions(precision, device)
        threads = _candidate_threads(num_threads, device)
        best = Route(precisions[0], False, False, threads[0])
        measure(best)
        stages = [lambda b: [replace(b, precision=p) for p in precisions if p != b.precision],
                  lambda b: [replace(b, channels_last=True)],
                  lambda b: [replace(b, threads=t) for t in threads if t != b.threads]]
        for stage in stages:  # greedy: each choice on the best route so far
            for option in stage(best):
                if over_budget():  # the rest as the budget allows: else what `precision: auto` means
                    break
                if measure(option) < (1.0 - MIN_GAIN) * timings[best.name]:
                    best = option
        if budget_s >= (COMPILE_MIN_MINUTES_GPU if device.type == "cuda" else COMPILE_MIN_MINUTES) * 60:
            compiled = replace(best, compile=True)
            try:
                first, step = _time_steps(model, compiled, x, device, steps)
            except Exception as err:  # noqa: BLE001 - no compiler on this machine: eager it is
                logger.info("torch.compile is not available here (%s): training eagerly", str(err).splitlines()[0])
            else:
                compile_setup = first - step
                timings[compiled.name] = step
                eager = timings[best.name]
                if (budget_s - compile_setup) / step > budget_s / eager:
                    best = compiled
        best.apply(model, ndim)
        model.load_state_dict(saved)
    model.train(was_training)
    return RouteChoice(best, "probe", timings, compile_setup, time.perf_counter() - start)


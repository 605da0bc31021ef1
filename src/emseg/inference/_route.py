"""Routes: how the network is run (precision, engine, layout, threads, window, batch), and the tuner picking one.

A :class:`Route` is written as a name, e.g. ``bf16-eager-cl-t2-w768x1024-b4``:

``precision``   ``fp32``, ``bf16`` (autocast), ``int8`` (post-training quantised, CPU, opt-in) or
                ``const`` (the network replaced by a constant: the pipeline alone, for benchmarks);
``engine``      ``eager``, ``jit`` (TorchScript-frozen copy; fp32 only) or ``compile`` (``torch.compile``;
                fp32/bf16, tried by the tuner only where its set-up is repaid over the volume, :func:`compile_pays`);
``layout``      ``nchw`` or ``cl`` (channels-last; fp32/bf16);
``tN``          torch intra-op threads; ``wYxX`` the sliding window (``wmodel``: the model's own);
``bN``          windows per forward pass; with a window holding the whole slice, N consecutive slices per
                forward (fixed groups along z, the same in memory and blockwise).

:func:`resolve_route` turns what the user asked for (``auto``, ``auto+int8``, a name, ``default``)
into the route to run and a record for the run metadata.  ``auto`` times the candidates on a probe (crops
of :data:`PROBE_SLICES` consecutive slices, :data:`PROBE_MAX_PIXELS` each at most; a route runs on as many
of them as it puts in one forward pass), keeps those whose labels agree with the fp32 reference on at least
:data:`AGREEMENT_THRESHOLD` of the probe's pixels, and picks the fastest.  A forced bf16 or int8 route is
checked the same way and refused (falling back to fp32, with a warning) below the threshold.  Labels are
bit-identical between runs of the same route; the record lets a resumed run keep it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from emseg._device import cpu_has_native_bf16

logger = logging.getLogger(__name__)

__all__ = ["AGREEMENT_THRESHOLD", "BATCH_CANDIDATES", "COMPILE_GAIN", "COMPILE_SETUP_S", "COMPILE_SHAPES",
           "ENGINE_MEMORY_GB", "MAX_MEMORY_GB", "PROBE_MAX_PIXELS", "PROBE_SLICES", "TUNE_MIN_VOXELS", "Route", "available_cores", "calibrate_recorded",
           "compile_pays", "compile_repaid", "describe", "engine_route", "resolve_route", "route_overlap"]

#: A route whose labels agree with the fp32 reference on fewer of the probe's pixels than this is refused.
AGREEMENT_THRESHOLD = 0.995

#: Without ``--route``, inputs smaller than this (voxels) are not tuned: the default route runs.  The probe
#: took 108 s for the default ``unet2d`` on 2 busy cores (docs/BENCHMARKS.md), where the chosen route ran
#: 2.3x the fastest candidate with the model's window: tuning pays off from roughly 100 M voxels; this
#: leaves a margin (~340 slices of 768 x 1024).
TUNE_MIN_VOXELS = 2**28

#: The probe: at most this many pixels of one slice (its first rows, whole width).
PROBE_MAX_PIXELS = 2**19

#: The probe's slices (consecutive, from the probed one): routes with several slices per forward pass run
#: on as many as they batch (a one-slice route on the first only, so they cost no more to time).
PROBE_SLICES = 4

#: Windows (or, with a whole-slice window, slices) per forward pass tried by the tuner, with the model's own.
BATCH_CANDIDATES = (1, 2, 4)

#: On a GPU: larger batches (and as many probe slices as the largest), the device's way to keep busy.
BATCH_CANDIDATES_GPU, PROBE_SLICES_GPU = (1, 4, 8, 16), 16

#: ``torch.compile`` set-up (s) and speed-up over eager assumed before it is tried, for the default ``unet2d``
#: predicting 768 x 1024 slices on the 2-core AVX512-BF16 CPU here (docs/BENCHMARKS.md): set-up 35 s (fp32, 2
#: threads, load ~3) to 63-70 s (1 thread, load ~12; ``benchmarks/compile_setup.py --predict``); speed-up 1.85x
#: (fp32 NCHW), 1.15x (bf16 channels-last), 0.44x (bf16 channels-last, 4 slices per forward, in the tuner).
#: The probe then measures the real figures (:func:`compile_repaid`).
COMPILE_SETUP_S, COMPILE_GAIN = 60.0, 1.2

#: Compilations a run pays: the probe's shape, then the volume's slice (and its last, smaller batch: dynamic).
COMPILE_SHAPES = 3

#: A window as large as the whole slice is a candidate for slices up to this many pixels.
WHOLE_SLICE_MAX_PIXELS = 2**21

#: The default limit (GB) on a tuned run's estimated peak resident memory (issue 21's target for the default
#: ``unet2d`` on 768 x 1024 slices).  Pass ``max_memory_gb=None`` (``--max-memory 0``) for no limit.
MAX_MEMORY_GB = 2.0

#: Resident memory (GB) of the blockwise engine beyond the tuner's process and the route's forward pass
#: (blocks read ahead and written behind, their normalised copies and labels, allocator slack), measured
#: for 12 x 768 x 1024 blocks of the default ``unet2d`` (docs/BENCHMARKS.md, "memory-aware routes").
ENGINE_MEMORY_GB = 0.5

#: The fastest few accepted routes are timed again in this many interleaved rounds before the choice.
RETIME_TOP, RETIME_ROUNDS = 3, 2

_NAME = re.compile(r"^(fp32|bf16|int8|const)-(eager|jit|compile)-(nchw|cl)-t(\d+)-w(model|\d+x\d+)-b(\d+)$")


@dataclasses.dataclass(frozen=True)
class Route:
    """One way of running the network; see the module docstring for its name."""

    precision: str = "fp32"
    jit: bool = False
    channels_last: bool = False
    threads: int = 1
    window: tuple[int, int] | None = None
    batch_size: int = 4
    compiled: bool = False

    def __post_init__(self) -> None:
        if self.jit and self.precision != "fp32":
            raise ValueError(f"route {self.name}: the frozen (jit) engine is fp32 only")
        if self.compiled and (self.jit or self.precision not in ("fp32", "bf16")):
            raise ValueError(f"route {self.name}: the compile engine is for fp32/bf16 (not with jit)")
        if self.channels_last and self.precision not in ("fp32", "bf16"):
            raise ValueError(f"route {self.name}: channels-last (cl) is an fp32/bf16 layout")
        if self.threads < 1 or self.batch_size < 1 or (self.window is not None and min(self.window) < 1):
            raise ValueError(f"route {self.name}: threads, window and batch must be positive")

    @property
    def name(self) -> str:
        window = "model" if self.window is None else f"{self.window[0]}x{self.window[1]}"
        engine = "compile" if self.compiled else "jit" if self.jit else "eager"
        return (f"{self.precision}-{engine}-{'cl' if self.channels_last else 'nchw'}"
                f"-t{self.threads}-w{window}-b{self.batch_size}")

    @classmethod
    def parse(cls, name: str) -> Route:
        """The route of a name such as ``bf16-eager-cl-t2-w768x1024-b4``.

        Raises:
            ValueError: naming the format and an example.
        """
        match = _NAME.match(str(name).strip())
        if match is None:
            raise ValueError(f"--route {name!r} is not a route: use auto, auto+int8, default or a name "
                             "PRECISION-ENGINE-LAYOUT-tTHREADS-wWINDOW-bBATCH, e.g. bf16-eager-cl-t2-w768x1024-b4 "
                             "(precision fp32/bf16/int8/const, engine eager/jit/compile, layout nchw/cl, window model "
                             "or YxX)")
        prec, engine, layout, threads, window, batch = match.groups()
        win = None if window == "model" else tuple(int(v) for v in window.split("x"))
        return cls(prec, engine == "jit", layout == "cl", int(threads), win, int(batch),  # type: ignore[arg-type]
                   engine == "compile")

    def predictor_options(self) -> dict[str, Any]:
        """Options of :class:`~emseg.inference.Predictor` (``window`` only where not the model's)."""
        network = {"int8": "int8", "const": "constant"}.get(self.precision, "model")
        options = {"precision": "bf16" if self.precision == "bf16" else "fp32", "jit": self.jit,
                   "channels_last": self.channels_last, "network": network, "batch_size": self.batch_size}
        if self.window is not None:
            options["window"] = tuple(self.window)
        if self.compiled:
            options["compile"] = True
        return options


def compile_pays(voxels: int, mvox_s: float, *, setup_s: float = COMPILE_SETUP_S, gain: float = COMPILE_GAIN) -> bool:
    """Whether ``torch.compile`` is worth trying for ``voxels`` at the best eager rate ``mvox_s`` (MVox/s).

    Before it is timed, its set-up and gain are the measured figures (:data:`COMPILE_SETUP_S`,
    :data:`COMPILE_GAIN`): tried when the time it would save over the volume exceeds
    :data:`COMPILE_SHAPES` set-ups.
    """
    seconds = voxels / max(mvox_s, 1e-9) / 1e6
    return seconds * (1.0 - 1.0 / gain) > COMPILE_SHAPES * setup_s


def compile_repaid(voxels: int, mvox_s: float, compiled_mvox_s: float, setup_s: float) -> bool:
    """Whether a timed compiled route, ``compiled_mvox_s`` after a set-up of ``setup_s`` seconds on the probe,
    beats ``mvox_s`` over ``voxels``: its saving must repay the compilations still to come (the volume's shapes)."""
    saved = voxels / max(mvox_s, 1e-9) / 1e6 - voxels / max(compiled_mvox_s, 1e-9) / 1e6
    return saved > (COMPILE_SHAPES - 1) * setup_s


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def route_overlap(radius: int, window: tuple[int, int]) -> float:
    """``overlap="auto"`` for ``window``: receptive-field radius / window, in [1/16, 1/2] (as ``Predictor.auto_overlap``)."""
    return float(min(0.5, max(1.0 / 16, radius / min(window))))


#: The probe's clock (a seam for tests that fake the timings).
_clock = time.perf_counter


def _rss_gb() -> float | None:
    """This process's resident memory (GB) from ``/proc/self/statm``; None where there is none (not Linux)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9


def _trim() -> None:
    """Give the C heap's free memory back to the system (glibc ``malloc_trim``; nothing elsewhere), so that
    what the next call allocates shows as a rise of resident memory instead of reusing retained pages."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _working_memory(call: Callable[[], Any], interval: float = 0.002) -> tuple[Any, float | None]:
    """``call()`` and the largest rise (GB) of resident memory above its start, sampled every ``interval`` s
    in a background thread (a seam for tests that fake the memory)."""
    import threading

    _trim()
    start = _rss_gb()
    if start is None:
        return call(), None
    peak, done = [start], threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            now = _rss_gb()
            if now is not None and now > peak[0]:
                peak[0] = now

    thread = threading.Thread(target=sample, name="emseg-route-memory", daemon=True)
    thread.start()
    try:
        result = call()
    finally:
        done.set()
        thread.join()
    now = _rss_gb()
    return result, max(0.0, max(peak[0], now or 0.0) - start)


def _window_pixels(window: tuple[int, int] | None, divisor: int, shape: tuple[int, int]) -> int:
    """Pixels of one window on a slice of ``shape`` (a window larger than the slice shrinks to it)."""
    if window is None:
        return int(np.prod(shape))
    return int(np.prod([min(w, -(-s // divisor) * divisor) for w, s in zip(window, shape)]))


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b)) if a.shape == b.shape else 0.0


class _Probe:
    """Times routes on the probe slices and compares their labels with the fp32 reference's.

    ``images`` is ``(S, Y, X)`` or ``(S, C, Y, X)``: ``S`` consecutive slices (crops of the same rows).  A
    route runs on as many of them as it puts in one forward pass (``slices_per_forward``, one for most),
    and its labels are compared with the reference's on those slices.  The first call of a route is its
    warm-up, whose excess over a timed call is recorded as its set-up (``setup_s``: tracing, compiling).
    """

    def __init__(self, build: Callable[[Route], Any], images: np.ndarray,
                 plane: tuple[int, int] | None = None, limit_gb: float | None = None) -> None:
        self.build, self.images = build, images
        self.plane = tuple(plane) if plane is not None else tuple(images.shape[-2:])  # the volume's slice
        #: routes whose forward pass would take this process above ``limit_gb`` (GB) are not run at all,
        #: predicted from the memory per forward pixel measured so far at their precision (or fp32's)
        self.limit_gb = limit_gb
        self.per_pixel: dict[str, float] = {}
        self.image = images[0]
        self.pixels = int(np.prod(images.shape[-2:]))
        self.results: dict[str, dict[str, Any]] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.predictors: dict[str, Any] = {}
        self.slices: dict[str, int] = {}
        self.reference: str | None = None

    def _stack(self, name: str) -> np.ndarray:
        return self.images[:self.slices[name]]

    def forward_pixels(self, route: Route, predictor: Any, n: int) -> int:
        """Pixels of one forward pass of ``route`` on the probe: ``n`` slices of one window each, or (one
        slice) as many of its windows as the route batches and the crop holds."""
        crop = tuple(self.images.shape[-2:])
        window = _window_pixels(getattr(predictor, "window", None), int(getattr(predictor, "divisor", 1) or 1), crop)
        if n > 1:
            return n * window
        return min(route.batch_size, max(1, -(-self.pixels // max(1, window)))) * window

    def _scale(self, predictor: Any) -> float:
        """Whole slice / probe crop, for the working memory of ``predictor``'s window."""
        window, divisor = getattr(predictor, "window", None), int(getattr(predictor, "divisor", 1) or 1)
        return _window_pixels(window, divisor, self.plane) / max(1, _window_pixels(
            window, divisor, tuple(self.images.shape[-2:])))

    def predicted_gb(self, route: Route, pixels: int) -> float | None:
        """The working memory ``route`` would need for a forward pass of ``pixels`` on the probe, if known."""
        rate = self.per_pixel.get(route.precision, self.per_pixel.get("fp32"))
        return None if rate is None else rate * pixels

    def _reference_labels(self, n: int) -> np.ndarray:
        """The reference's labels on the first ``n`` probe slices (the extra slices predicted when first asked)."""
        have = self.labels[self.reference]
        if have.shape[0] < n:
            route = Route.parse(self.reference)
            before = torch.get_num_threads()
            torch.set_num_threads(route.threads)
            try:
                more = self.predictors[self.reference].predict_labels_stack(self.images[have.shape[0]:n])
            finally:
                torch.set_num_threads(before)
            self.labels[self.reference] = have = np.concatenate([have, more])
        return have[:n]

    def measure(self, route: Route, reference: str | None) -> dict[str, Any]:
        if route.name in self.results:
            return self.results[route.name]
        before = torch.get_num_threads()
        torch.set_num_threads(route.threads)
        try:
            predictor = self.build(route)
            if route.precision == "int8":
                predictor.calibrate_int8(self.image)
            self.slices[route.name] = n = max(1, min(len(self.images), predictor.slices_per_forward(
                tuple(self.images.shape[-2:]))))
            pixels = self.forward_pixels(route, predictor, n)
            predicted = self.predicted_gb(route, pixels) if reference is not None else None
            now = _rss_gb()
            if self.limit_gb is not None and predicted is not None and now is not None \
                    and now + predicted > self.limit_gb:
                result = {"name": route.name, "skipped": f"not run: its forward pass would need about {predicted:.2f} "
                          f"GB more than the {now:.2f} GB in use, over the {self.limit_gb:g} GB limit",
                          "memory_gb": predicted * self._scale(predictor), "over_memory": True}
                self.results[route.name] = result
                return result
            start = _clock()
            # warm-up (traces, oneDNN primitives), its working memory sampled: the timed call is left alone
            labels, memory = _working_memory(lambda: predictor.predict_labels_stack(self._stack(route.name)))
            warm = _clock() - start
            start = _clock()
            predictor.predict_labels_stack(self._stack(route.name))
            seconds = _clock() - start
        except (RuntimeError, ValueError) as err:  # a route this network cannot take (int8 of an odd layer, ...)
            logger.info("route %s: not available (%s)", route.name, err)
            result = {"name": route.name, "error": str(err).splitlines()[0] if str(err) else type(err).__name__}
            self.results[route.name] = result
            return result
        finally:
            torch.set_num_threads(before)
        self.labels[route.name] = labels
        self.predictors[route.name] = predictor
        if reference is None:
            self.reference = route.name
        agree = 1.0 if reference is None else _agreement(labels, self._reference_labels(n))
        result = {"name": route.name, "mvox_s": n * self.pixels / max(seconds, 1e-9) / 1e6, "agreement": agree,
                  "slices": n, "setup_s": max(0.0, warm - seconds)}
        if memory is not None:  # scaled from the probe's crop to a whole slice of the volume
            self.per_pixel[route.precision] = max(self.per_pixel.get(route.precision, 0.0), memory / max(1, pixels))
            result["memory_gb"] = memory * self._scale(predictor)
        self.results[route.name] = result
        return result

    def retime(self, routes: list[Route], rounds: int) -> None:
        """Time ``routes`` again in interleaved rounds (A B C A B C); each keeps its best rate (less noise)."""
        for _ in range(rounds):
            for route in routes:
                before = torch.get_num_threads()
                torch.set_num_threads(route.threads)
                try:
                    start = _clock()
                    self.predictors[route.name].predict_labels_stack(self._stack(route.name))
                    rate = self.slices[route.name] * self.pixels / max(_clock() - start, 1e-9) / 1e6
                finally:
                    torch.set_num_threads(before)
                self.results[route.name]["mvox_s"] = max(self.results[route.name]["mvox_s"], rate)


def _tune(probe: _Probe, *, reference: Route, whole: tuple[int, int] | None, cores: int, bf16: bool, int8: bool,
          threshold: float, voxels: int = 0, memory_room_gb: float | None = None) -> tuple[Route, dict[str, Any]]:
    """Fastest route agreeing with ``reference`` on the probe: engines, then windows and batches, then threads,
    then ``torch.compile`` of the best where it pays off over ``voxels`` (:func:`compile_pays`).

    ``memory_room_gb``: the most working memory (``memory_gb`` of a result) a route may need; routes above it
    are passed over (marked ``over_memory``), and when every agreeing route is, the one of least memory runs.
    """
    probe.measure(reference, None)

    def fits(route: Route) -> bool:
        r = probe.results.get(route.name, {})
        return memory_room_gb is None or r.get("memory_gb") is None or r["memory_gb"] <= memory_room_gb

    def agrees(route: Route) -> bool:
        r = probe.results.get(route.name, {})
        return "mvox_s" in r and r["agreement"] >= threshold and r.get("repaid", True)

    def ok(route: Route) -> bool:
        return agrees(route) and fits(route)

    def fastest(routes: list[Route], memory: bool = True) -> Route:
        for route in routes:
            probe.measure(route, reference.name)
        return max((r for r in routes if (ok(r) if memory else agrees(r))),
                   key=lambda r: probe.results[r.name]["mvox_s"], default=reference)

    base = dataclasses.replace(reference, window=whole or reference.window)
    if probe.limit_gb is not None and whole is not None:  # engines compared at a batch the memory allows
        now, rows = _rss_gb() or 0.0, int(np.prod(probe.images.shape[-2:]))
        fitting = [b for b in sorted({1, *BATCH_CANDIDATES, reference.batch_size}) if b <= len(probe.images)
                   and now + (probe.predicted_gb(base, b * rows) or 0.0) <= probe.limit_gb]
        base = dataclasses.replace(base, batch_size=max(fitting, default=1))
    engines = [base, dataclasses.replace(base, channels_last=True)]
    if not torch.cuda.is_available():  # the frozen copy is a CPU route (on a GPU the windows run eagerly)
        engines.append(dataclasses.replace(base, jit=True))
    if bf16:
        engines += [dataclasses.replace(base, precision="bf16"),
                    dataclasses.replace(base, precision="bf16", channels_last=True)]
    if int8:
        engines.append(dataclasses.replace(base, precision="int8"))
    best = fastest([reference, *engines], memory=False)  # the engine's speed; its batch is chosen next
    batches = sorted({*(BATCH_CANDIDATES_GPU if torch.cuda.is_available() else BATCH_CANDIDATES),
                      reference.batch_size})  # with the whole-slice window: slices per forward
    windows = [dataclasses.replace(best, window=w, batch_size=b)
               for w in dict.fromkeys([reference.window, whole]) for b in batches
               if w is None or w != whole or b <= len(probe.images)]
    best = fastest([best, *windows])
    threads = sorted({max(1, cores // 2)} - {best.threads})
    best = fastest([best, *(dataclasses.replace(best, threads=t) for t in threads)])
    rate = probe.results[best.name]["mvox_s"]
    if best.precision in ("fp32", "bf16") and compile_pays(voxels, rate):
        compiled = dataclasses.replace(best, jit=False, compiled=True)
        result = probe.measure(compiled, reference.name)
        if "mvox_s" in result:
            result["repaid"] = compile_repaid(voxels, rate, result["mvox_s"], result["setup_s"])
    # one timing each is noisy on a shared machine: the fastest few are timed again, interleaved
    for name, r in probe.results.items():
        if "mvox_s" in r and not fits(Route.parse(name)):
            r["over_memory"] = True
    accepted = sorted((Route.parse(n) for n in probe.results if ok(Route.parse(n))),
                      key=lambda r: -probe.results[r.name]["mvox_s"])[:RETIME_TOP]
    if not accepted:  # nothing fits the memory limit: the agreeing route of least memory
        agreeing = [Route.parse(n) for n in probe.results if agrees(Route.parse(n))]
        least = min(agreeing, key=lambda r: (probe.results[r.name]["memory_gb"], -probe.results[r.name]["mvox_s"]),
                    default=reference)
        return least, probe.results[least.name]
    probe.retime(accepted, RETIME_ROUNDS)
    best = max(accepted, key=lambda r: probe.results[r.name]["mvox_s"], default=best)
    return best, probe.results[best.name]


def resolve_route(requested: str | None, *, build: Callable[[Route], Any], volume: Any, z: int,
                  model_window: tuple[int, int], batch_size: int, threshold: float = AGREEMENT_THRESHOLD,
                  stored: dict[str, Any] | None = None, slice_input: Callable[[Any, int], np.ndarray] | None = None,
                  max_memory_gb: float | None = MAX_MEMORY_GB) -> tuple[Route | None, dict[str, Any]]:
    """The route to run and its record for the run metadata.

    Args:
        requested: ``None`` (tune inputs of :data:`TUNE_MIN_VOXELS` voxels or more, else the default route),
            ``"default"``, ``"auto"``, ``"auto+int8"`` (int8 among the candidates) or a route name.
        build: ``build(route)`` -> a :class:`~emseg.inference.Predictor` running that route.
        volume: the ``(Z, Y, X)`` input (read lazily: only the probe is read).
        z: the slice to probe (the middle of the first block).
        model_window: the model's own window; ``batch_size``: its windows per forward pass.
        threshold: the smallest label agreement with fp32 on the probe a bf16/int8 route may have.
        stored: the record of the run being resumed: its route is kept (no probe) unless another is forced.
        slice_input: ``slice_input(volume, z)`` -> the raw network input of slice ``z`` (context slices).
        max_memory_gb: ``auto`` runs the fastest agreeing route whose estimated peak resident memory (GB) is
            within this; None: no limit.  A forced route is run whatever its memory (its estimate recorded).

    Returns:
        ``(route or None for the default route, record)``; the record holds ``name``, ``requested``,
        ``mvox_s`` and ``agreement`` on the probe, the probe's box, the candidates (with ``memory_gb``,
        each one's working memory on a whole slice), the estimated peak ``memory_estimate_gb`` of the
        chosen route, the limit, and any refusal.
    """
    if stored is not None and requested in (None, "auto", "auto+int8", stored.get("requested")):
        logger.info("resuming with the recorded route %s", stored.get("name") or "default")
        return (Route.parse(stored["name"]) if stored.get("name") else None), dict(stored)
    shape = tuple(int(s) for s in volume.shape)
    if requested is None:
        if int(np.prod(shape)) < TUNE_MIN_VOXELS:
            return None, {"name": None, "requested": None,
                          "reason": f"input smaller than {TUNE_MIN_VOXELS:,} voxels: default route, not tuned"}
        requested = "auto"
    if requested == "default":
        return None, {"name": None, "requested": "default"}
    if max_memory_gb is not None and not max_memory_gb > 0:
        raise ValueError(f"max_memory_gb must be a positive number of GB (or None for no limit), got {max_memory_gb}")
    if not 0.0 <= threshold <= 1.01:
        raise ValueError(f"agreement threshold must be a fraction in [0, 1] (1.01: refuse every bf16/int8 route), "
                         f"got {threshold}")
    forced = None if requested in ("auto", "auto+int8") else Route.parse(requested)
    start = time.perf_counter()
    rows = max(1, min(shape[1], PROBE_MAX_PIXELS // max(1, shape[2])))
    slices = PROBE_SLICES_GPU if torch.cuda.is_available() else PROBE_SLICES
    z = max(0, min(int(z), shape[0] - slices))
    read = slice_input or (lambda v, k: np.asarray(v[k]))
    images = np.stack([np.asarray(read(volume, k))[..., :rows, :] for k in range(z, min(shape[0], z + slices))])
    _trim()
    base_gb = _rss_gb()
    base_gb = None if base_gb is None else base_gb + ENGINE_MEMORY_GB
    weigh = max_memory_gb is not None and base_gb is not None and not torch.cuda.is_available()
    probe = _Probe(build, images, plane=(shape[1], shape[2]),
                   limit_gb=max_memory_gb if weigh and forced is None else None)  # a forced route runs
    plane = shape[1] * shape[2]
    whole = tuple(shape[1:]) if plane <= WHOLE_SLICE_MAX_PIXELS else None
    cores = available_cores()
    record: dict[str, Any] = {"requested": requested, "threshold": threshold,
                              "probe": {"z": int(z), "y": [0, rows], "x": [0, shape[2]], "slices": len(images)},
                              "max_memory_gb": max_memory_gb if weigh else None, "base_memory_gb": base_gb}
    if forced is None:
        reference = Route("fp32", threads=cores, window=None, batch_size=batch_size)
        bf16 = torch.cuda.is_available() or cpu_has_native_bf16()
        route, result = _tune(probe, reference=reference, whole=whole, cores=cores, bf16=bf16,
                              int8=requested == "auto+int8", threshold=threshold, voxels=int(np.prod(shape)),
                              memory_room_gb=max(0.0, max_memory_gb - base_gb) if weigh else None)
        if result.get("over_memory"):
            record["memory_note"] = (f"no agreeing route fits {max_memory_gb:g} GB: running the one of least "
                                     "memory")
            logger.warning("%s", record["memory_note"])
        record["reference"] = reference.name
    else:
        reference = dataclasses.replace(forced, precision="fp32", jit=False, channels_last=False, compiled=False)
        probe.measure(reference, None)
        result = probe.measure(forced, reference.name) if forced != reference else probe.results[reference.name]
        route = forced
        record["reference"] = reference.name
        if forced.precision in ("bf16", "int8") and ("error" in result or result["agreement"] < threshold):
            why = (result["error"] if "error" in result else
                   f"its labels agree with fp32 on {100 * result['agreement']:.2f} % of the probe's pixels, below "
                   f"the {100 * threshold:.2f} % threshold")
            fallback = dataclasses.replace(forced, precision="fp32", channels_last=forced.channels_last
                                           and forced.precision == "bf16", compiled=forced.compiled
                                           and forced.precision == "bf16")
            record["refused"] = f"route {forced.name} refused: {why}; running {fallback.name} instead"
            logger.warning("%s", record["refused"])
            route, result = fallback, probe.measure(fallback, reference.name)
    memory = result.get("memory_gb")
    record.update(name=route.name, mvox_s=result.get("mvox_s"), agreement=result.get("agreement"),
                  memory_estimate_gb=None if memory is None or base_gb is None else base_gb + memory,
                  candidates=list(probe.results.values()), tuning_s=time.perf_counter() - start)
    return route, record


def describe(record: dict[str, Any]) -> str:
    """One line for the user: the route, its rate and agreement on the probe."""
    if not record.get("name"):
        return "route: default" + (f" ({record['reason']})" if record.get("reason") else "")
    text = f"route: {record['name']}"
    if record.get("mvox_s") is not None:
        text += (f" ({record['mvox_s']:.2f} MVox/s on the probe, labels {100 * record['agreement']:.2f} % "
                 f"identical to fp32 {record.get('reference', '')}"
                 + (f"; peak memory about {record['memory_estimate_gb']:.1f} GB"
                    + (f", limit {record['max_memory_gb']:g} GB" if record.get("max_memory_gb") else "")
                    if record.get("memory_estimate_gb") is not None else "") + ")")
    return text


def engine_route(requested: str | None, *, load: Callable[..., Any], options: dict[str, Any], overlap: Any,
                 volume: Any, z: int, threshold: float = AGREEMENT_THRESHOLD, stored: dict[str, Any] | None = None,
                 max_memory_gb: float | None = MAX_MEMORY_GB) -> tuple[Route | None, dict[str, Any], dict[str, Any]]:
    """The route for a prediction of ``volume`` with the predictor ``load(**options)``, and its options.

    ``overlap="auto"`` is resolved per route window from the network's receptive field (as the predictor
    does), so a forced ``--route NAME`` reproduces the options, and so the labels, of the tuned run.

    Returns:
        ``(route or None, record, predictor options)``; for the default route the options are ``options``.
    """
    if requested is None and stored is None and int(np.prod(volume.shape)) < TUNE_MIN_VOXELS:
        return None, {"name": None, "requested": None,
                      "reason": f"input smaller than {TUNE_MIN_VOXELS:,} voxels: default route, not tuned"}, options
    base = load(**options)
    if not (getattr(base, "_labels_from_logits", False) and hasattr(base, "calibrate_int8")):
        if requested not in (None, "default"):
            raise ValueError(f"--route {requested}: routes apply to tiled 2-D networks (one model); "
                             f"this {type(base).__name__} runs its own way: leave --route out")
        return None, {"name": None, "requested": requested, "reason": "not a tiled 2-D network"}, options
    radius = base.receptive_radius() if overlap == "auto" else 0

    def route_options(route: Route) -> dict[str, Any]:
        opts = {**options, **route.predictor_options()}
        opts["overlap"] = route_overlap(radius, route.window or base.window) if overlap == "auto" else overlap
        return opts

    route, record = resolve_route(requested, build=lambda r: load(**route_options(r)), volume=volume, z=z,
                                  model_window=base.window, batch_size=base.batch_size, threshold=threshold,
                                  stored=stored, slice_input=base._slice_input, max_memory_gb=max_memory_gb)
    _trim()  # the probe's predictors are gone: their memory back to the system before the run
    return route, record, (route_options(route) if route is not None else options)


def calibrate_recorded(predictor: Any, route: Route | None, record: dict[str, Any], volume: Any) -> None:
    """Quantise an int8 route's predictor on the probe recorded in ``record`` (the same network on resume)."""
    if route is None or route.precision != "int8" or predictor._runner is not None:
        return
    box = record["probe"]
    image = predictor._slice_input(volume, box["z"])[..., box["y"][0]:box["y"][1], box["x"][0]:box["x"][1]]
    predictor.calibrate_int8(np.asarray(image))

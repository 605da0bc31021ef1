"""How one batch of windows goes through the network: the compute routes of a :class:`Predictor`.

A route (:mod:`emseg.inference._route`) is a precision (fp32, bf16 autocast, int8), an engine (eager, or
a TorchScript-frozen copy, or ``torch.compile``), a memory layout (NCHW or channels-last), a thread count, a
window and a batch
size.  This module runs the network part of one: :class:`NetworkRunner` maps a ``(N, C, Y, X)`` batch to
float32 ``(N, K, Y, X)`` logits.  Also here: :class:`ConstantNetwork` (a network replaced by a constant,
to time the pipeline around it), :func:`quantize_int8` (PyTorch's own post-training quantisation for
x86/oneDNN) and the receptive-field probe.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import numpy as np
import torch

from emseg._device import autocast

logger = logging.getLogger(__name__)

__all__ = ["NETWORKS", "PROBE_START", "ConstantNetwork", "NetworkRunner", "probe_receptive_radius", "quantize_int8"]

#: What runs in place of the trained network: itself, its int8 quantised copy, or a constant (benchmarks).
NETWORKS = ("model", "int8", "constant")


class ConstantNetwork(torch.nn.Module):
    """A network replaced by a constant: logits 1 for class ``label`` and 0 elsewhere, at every pixel.

    Used to measure the pipeline on its own (read, normalise, tile, argmax, write): the logits are
    written out in full, as a real network's are, so what is left is the engine's own cost.
    """

    def __init__(self, num_classes: int, label: int) -> None:
        super().__init__()
        if not 0 <= label < num_classes:
            raise ValueError(f"label must be a class index in [0, {num_classes}), got {label}")
        self.num_classes, self.label = int(num_classes), int(label)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((x.shape[0], self.num_classes, *x.shape[2:]), dtype=torch.float32)
        out[:, self.label] = 1.0
        return out


def quantize_int8(model: torch.nn.Module, sample: torch.Tensor) -> torch.nn.Module:
    """Post-training static int8 quantisation of ``model`` for x86 CPUs (oneDNN/fbgemm), calibrated on ``sample``.

    PyTorch's FX graph-mode quantisation (``torch.ao.quantization.quantize_fx``) with the ``x86`` qconfig:
    weights per channel, activations per tensor, observer ranges from one pass over ``sample``
    ``(N, C, Y, X)`` (normalised input).  The same sample gives the same quantised network, so the route
    is reproducible when the sample is (the engine records where it was read).

    Raises:
        RuntimeError: the network cannot be traced or quantised (the caller falls back to fp32).
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    net = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():  # FX quantisation's deprecation notices
        warnings.simplefilter("ignore")
        try:
            prepared = prepare_fx(net, get_default_qconfig_mapping("x86"), example_inputs=(sample,))
            with torch.no_grad():
                prepared(sample)
            return convert_fx(prepared).eval()
        except Exception as err:  # noqa: BLE001 - tracing and quantisation failures have many types
            raise RuntimeError(f"{type(model).__name__} cannot be quantised to int8 ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})") from err


class NetworkRunner:
    """Float32 logits of a batch of windows through one route's network.

    Args:
        model: the torch network ``(N, C, Y, X) -> (N, K, Y, X)``.
        device: where it runs.
        dtype: autocast dtype (bf16 / fp16), or None for fp32.
        jit: CPU fp32 only: run a TorchScript-frozen copy, checked once per window shape against the
            eager network (a mismatch or an untraceable model falls back to eager with a warning).
        channels_last: run network and batch in channels-last memory layout (oneDNN's preferred one).
        compile: run ``torch.compile(model)`` (inductor), under the same autocast; compiled on the first
            batch and again for each new batch shape (its set-up, docs/BENCHMARKS.md).  A network that
            cannot be compiled runs eagerly, with a warning.
    """

    def __init__(self, model: torch.nn.Module, *, device: torch.device, dtype: torch.dtype | None,
                 jit: bool = False, channels_last: bool = False, compile: bool = False) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.jit, self.channels_last = bool(jit), bool(channels_last)
        self.compile = bool(compile) and not self.jit
        self._compiled: Any = None
        self._jit_module: Any = None
        self._jit_checked: set[tuple[int, ...]] = set()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if self.compile:
            return self._compiled_forward(batch)
        if not (self.jit and self.device.type == "cpu" and self.dtype is None):  # None: plain fp32
            with autocast(self.device, self.dtype):
                return self.model(batch).float()
        return self._frozen(batch)

    def _compiled_forward(self, batch: torch.Tensor) -> torch.Tensor:
        try:
            if self._compiled is None:
                self._compiled = torch.compile(self.model)
            with autocast(self.device, self.dtype):
                return self._compiled(batch).float()
        except Exception as err:  # noqa: BLE001 - no C++ compiler, an unsupported layer, ...: run eagerly
            logger.warning("compile: %s cannot be compiled (%s: %s); predicting eagerly", type(self.model).__name__,
                           type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            self.compile = False
            with autocast(self.device, self.dtype):
                return self.model(batch).float()

    def _frozen(self, batch: torch.Tensor) -> torch.Tensor:
        key = tuple(batch.shape)
        try:
            if self._jit_module is None:
                with warnings.catch_warnings():  # TorchScript's deprecation notice; tracer hints are checked below
                    warnings.simplefilter("ignore")
                    traced = torch.jit.trace(self.model, batch, check_trace=False)
                    self._jit_module = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            out = self._jit_module(batch).float()
        except Exception as err:  # noqa: BLE001 - any tracing failure means: run eagerly
            logger.warning("jit: %s cannot be frozen (%s: %s); predicting eagerly", type(self.model).__name__,
                           type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            self.jit = False
            return self.model(batch).float()
        if key not in self._jit_checked:  # once per window shape: the frozen copy must agree with the network
            ref = self.model(batch).float()
            tol = 1e-3 * (1.0 + float(ref.abs().max()))
            if out.shape != ref.shape or not bool(torch.allclose(out, ref, rtol=0.0, atol=tol)):
                logger.warning("jit: the frozen %s disagrees with the eager network on input %s; predicting eagerly",
                               type(self.model).__name__, key)
                self.jit = False
                return ref
            self._jit_checked.add(key)
        return out


#: Side of the first receptive-field probe (pixels); larger probes only where the gradient reaches its border.
PROBE_START = 256


def probe_receptive_radius(model: torch.nn.Module, channels: int, window: tuple[int, int], divisor: int) -> int:
    """Largest distance from the centre where d(output centre)/d(input) is non-zero (random input, eval mode).

    The probe starts on a :data:`PROBE_START`-pixel square (a multiple of ``divisor``) and doubles, up to
    the window's smaller side, while the non-zero gradient comes nearer the square's border than the widest
    gap inside it (a dense field: touches the border; dilated convolutions leave gaps): inside the
    square the answer is the network's receptive field, whatever the square's size, so the small probe
    gives the window-sized probe's answer at a fraction of its cost (0.57 s instead of 2.09 s for the
    default ``unet2d`` and a 512 window on a 2-core CPU).  Where the field is wider than the window the
    answer is clipped to the window, as before.
    """
    full = max(divisor, min(window) // divisor * divisor)
    size = min(full, max(divisor, PROBE_START // divisor * divisor))
    while True:
        radius, touches_border = _probe_once(model, channels, size)
        if not touches_border or size >= full:
            return radius
        size = min(full, 2 * size)


def _probe_once(model: torch.nn.Module, channels: int, size: int) -> tuple[int, bool]:
    """(radius, whether the non-zero gradient reaches the border) of one ``size`` x ``size`` probe."""
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((1, channels, size, size), generator=generator).to(param.device).requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(x)
            c = size // 2
            out[0, :, c, c].abs().sum().backward()
    finally:
        model.train(was_training)
    grad = x.grad[0].abs().sum(0).cpu().numpy()
    ys, xs = np.nonzero(grad)
    if ys.size == 0:
        return 0, False
    radius = int(max(c - ys.min(), ys.max() - c, c - xs.min(), xs.max() - c))
    return radius, _may_extend(ys, size) or _may_extend(xs, size)


def _may_extend(positions: np.ndarray, size: int) -> bool:
    """Whether a field with non-zero gradient at ``positions`` (one axis) may go on past the probe's border: its
    outermost pixels lie nearer the border than the widest gap inside it (1 for a dense field; dilated
    convolutions leave wider ones)."""
    found = np.unique(positions)
    gap = int(np.diff(found).max()) if found.size > 1 else 1
    return bool(found[0] < gap or size - 1 - found[-1] < gap)

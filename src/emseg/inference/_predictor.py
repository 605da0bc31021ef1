"""Sliding-window prediction of 2-D slices and stacks, from a checkpoint."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from emseg._device import default_device, resolve_precision
from emseg.constants import EXPORTED_SUFFIXES  # files written by ``emseg export``: read by inference._exported
from emseg.data import GrainFilterCache, Normalizer, add_grain_channels, centre_slice
from emseg.inference._ensemble import EnsemblePredictor
from emseg.inference._network import NETWORKS, ConstantNetwork, NetworkRunner, probe_receptive_radius, quantize_int8
from emseg.inference._outputs import check_options
from emseg.inference._protocol import SegmentationPredictor
from emseg.inference._seam import TiledSeam
from emseg.inference._volume import VolumePaths
from emseg.inference._tiling import first_argmax
from emseg.models import (
    DEFAULT_DIVISOR,
    DEFAULT_OVERLAP,
    DEFAULT_WINDOW,
    DEFAULT_WINDOW_3D,
    ENSEMBLE_BACKEND,
    load_checkpoint,
    rebuild_network,
)

logger = logging.getLogger(__name__)

__all__ = ["EXPORTED_SUFFIXES", "TTA_FLIPS", "Predictor", "load_predictor"]


#: Test-time augmentation: the identity and the flips along x, y and both (dims of an ``(N, C, ..., Y, X)`` tensor).
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


class Predictor(TiledSeam, VolumePaths, SegmentationPredictor):
    """Turns raw EM slices into class probabilities and labels (one model).

    Build it with :meth:`from_checkpoint` (a run directory or ``model.pt``),
    or with :meth:`from_model` during training.

    Parameters
    ----------
    model
        A torch module mapping ``(N, C, Y, X)`` to ``(N, K, Y, X)`` logits, or a
        trained :class:`~emseg.models.RandomForestSegmenter`.
    classes
        The ``K`` class names.
    normalizer
        Intensity normalisation fitted on the training data.
    context_slices
        Number of neighbouring slices fed as channels (1 = plain 2-D).
    window
        Sliding-window size ``(wy, wx)``; Gaussian blending with ``overlap``
        (a fraction of the window, or ``"auto"``: the network's receptive-field
        radius over the window, see :meth:`receptive_radius`).
    tta
        Test-time augmentation: average the probabilities of the slice and its
        three flips (4x the compute).
    window_3d
        Window ``(wz, wy, wx)`` of a 3-D model (default 5 x 256 x 256); ``wz``
        is clipped to the depth of the volume predicted.
    spatial_dims
        2 or 3; default: the model's ``spatial_dims`` attribute, else 2.
    jit
        CPU, fp32 only (under bf16 or on a GPU it is turned off with a warning and
        the windows run eagerly): run the sliding windows through a TorchScript-frozen copy
        of the network (``torch.jit.optimize_for_inference``: batch norm folded
        into the convolutions, oneDNN fusions): 1.36x faster on one thread and 1.6x
        on two for the default ``unet2d`` here (docs/BENCHMARKS.md), for a few
        seconds of set-up per process. Each new
        window shape is checked once against the eager network; a mismatch or a
        model that cannot be traced falls back to eager with a warning.

    Valid-padding models (``unet-original``, with an ``output_margin``) are
    tiled so their smaller outputs cover every pixel; ``window`` is then their
    input window, rounded up to a valid size.
    logit_offsets
        ``(K,)`` constants added to the logits of every window before blending,
        softmax and argmax: the decision calibration fitted on the validation
        slices after training (``inference.logit_offsets`` of the checkpoint, see
        :mod:`emseg.training._calibration`); ``None``: none.
    channels_last
        Run the network in channels-last memory layout (oneDNN's own; on the 2-core AVX512-BF16 CPU here
        2.3x faster than NCHW in fp32 for ``unet2d``, see docs/BENCHMARKS.md).
    compile
        Run the windows through ``torch.compile(model)`` (fp32 or bf16, 2-D tiled networks): a route the
        tuner tries only where its set-up is repaid over the volume (:mod:`emseg.inference._route`).
    batch_size
        Windows per forward pass; where one window holds the whole slice, that many consecutive slices
        per forward (in fixed groups along z, :meth:`slices_per_forward`), in memory and blockwise alike.
    network
        ``"model"`` (the default), ``"int8"`` (its post-training int8 copy for x86, built by
        :meth:`calibrate_int8`) or ``"constant"`` (logits one-hot on the last class everywhere: the
        pipeline timed without a network).  The routes are chosen by :mod:`emseg.inference._route`.
    grain_filter
        Area thresholds of the grain-filter input channels the model was trained
        with (``preprocess.grain_filter``): the filtered copies of the centre
        slice are appended after the context slices (cached per slice content,
        the last ``grain_cache`` slices).
    """

    def __init__(
        self,
        model: Any,
        *,
        classes: list[str],
        normalizer: Normalizer,
        context_slices: int = 1,
        window: tuple[int, int] = DEFAULT_WINDOW,
        overlap: float | str = DEFAULT_OVERLAP,
        batch_size: int = 4,
        divisor: int = DEFAULT_DIVISOR,
        device: torch.device | None = None,
        precision: str = "auto",
        tta: bool = False,
        window_3d: tuple[int, int, int] | None = None,
        spatial_dims: int | None = None,
        grain_filter: list[int] | tuple[int, ...] = (),
        grain_cache: int = 8,
        jit: bool = False,
        logit_offsets: Any = None,
        channels_last: bool = False,
        network: str = "model",
        compile: bool = False,
    ) -> None:
        self.model = model
        self.grain_filter = [int(a) for a in grain_filter]
        self._grains = GrainFilterCache(self.grain_filter, max_entries=grain_cache) if self.grain_filter else None
        self.tta = tta
        self.classes = list(classes)
        self.normalizer = normalizer
        self.context_slices = context_slices
        self.window = tuple(int(w) for w in window)
        self.overlap = overlap
        self._receptive_radius: int | None = None
        self.batch_size = batch_size
        self.divisor = divisor
        self.is_torch = isinstance(model, torch.nn.Module)
        self.device = device or default_device()
        self.dtype = resolve_precision(precision, self.device)
        if self.is_torch:
            self.model.to(self.device)
        self.spatial_dims = int(spatial_dims or getattr(model, "spatial_dims", 2))
        self.window_3d = tuple(int(w) for w in (window_3d or DEFAULT_WINDOW_3D))
        self.margin = int(getattr(model, "output_margin", 0)) if self.is_torch else 0
        if network not in NETWORKS:
            raise ValueError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
        self.network, self.channels_last = network, bool(channels_last)
        if (network != "model" or channels_last or compile) and not (self.spatial_dims == 2 and self.is_torch and not self.margin):
            raise ValueError(f"network={network!r}/channels_last/compile are routes of tiled 2-D networks, not of this "
                             f"{type(model).__name__}; leave them out (or use --route default)")
        if network == "int8" and self.device.type != "cpu":
            raise ValueError("the int8 route is a CPU route (x86 oneDNN); use --precision on a GPU")
        jit = bool(jit) and network == "model"
        if jit and (self.device.type != "cpu" or self.dtype is not None):
            # The frozen copy is traced in fp32 (TorchScript does not freeze autocast). Under bf16 (native on
            # this CPU, or asked for) eager bf16 is the faster route: 1.05 vs 0.47 MVox/s for the frozen fp32
            # copy on a 2-core AMX CPU (issue 21), so --jit gives way to the precision rather than the reverse.
            route = ("on a GPU" if self.device.type != "cpu"
                     else "under bf16 (precision 'auto' on a CPU with native bf16, or 'bf16')")
            logger.warning("jit: the frozen TorchScript copy is a CPU fp32 route; %s the windows run eagerly. "
                           "Use --precision fp32 --jit to force the frozen fp32 copy.", route)
            jit = False
        check_options(window=tuple(window), batch_size=batch_size)
        self.logit_offsets = None
        if logit_offsets is not None:
            offsets = np.asarray(logit_offsets, np.float32)
            if offsets.shape != (len(self.classes),) or not np.isfinite(offsets).all():
                raise ValueError(f"logit_offsets must be {len(self.classes)} finite numbers (one per class), "
                                 f"got {list(np.ravel(logit_offsets))}")
            self.logit_offsets = None if not offsets.any() else torch.from_numpy(offsets)
        if overlap == "auto":
            self.overlap = self.auto_overlap()
        elif not isinstance(overlap, (int, float)) or not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be a fraction in [0, 1) or 'auto', got {overlap!r}")
        self._runner: NetworkRunner | None = None  # int8: built by calibrate_int8
        if network == "constant":  # after the overlap: that still comes from the real network's receptive field
            net = ConstantNetwork(self.num_classes, self.num_classes - 1)
            self._runner = NetworkRunner(net, device=self.device, dtype=None)
        elif network == "model":  # a random forest never reaches _forward
            self._runner = NetworkRunner(self.model, device=self.device, dtype=self.dtype, jit=jit,
                                         channels_last=self.channels_last, compile=bool(compile) and not jit)
        self._jit_asked = jit
        self._table: torch.Tensor | None = None  # the normaliser's uint8 lookup table on the device (_run_raw)

    @property
    def jit(self) -> bool:
        """The windows run through the frozen TorchScript copy (False after a fallback to eager)."""
        return bool(self._runner.jit) if self._runner is not None else False

    @property
    def _jit_module(self) -> Any:
        """The frozen TorchScript copy once traced (None before, or off the jit route)."""
        return self._runner._jit_module if self._runner is not None else None

    def calibrate_int8(self, image: np.ndarray) -> None:
        """Quantise the network to int8 (``network="int8"``), calibrated on one raw slice ``(Y, X)`` / ``(C, Y, X)``.

        The same slice gives the same quantised network (the engine records which slice it used).
        """
        if self.network != "int8":
            raise ValueError(f"calibrate_int8 is for network='int8', this predictor runs {self.network!r}")
        sample = torch.from_numpy(np.ascontiguousarray(self._input(image)))[None]
        self._runner = NetworkRunner(quantize_int8(self.model, sample), device=self.device, dtype=None)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs: Any) -> SegmentationPredictor:
        """Rebuild the model and preprocessing from a run directory or checkpoint file (see :func:`load_predictor`)."""
        return load_predictor(path, **kwargs)

    @classmethod
    def from_checkpoint_dict(cls, ckpt: dict[str, Any], **kwargs: Any) -> SegmentationPredictor:
        """The predictor of a loaded checkpoint: one model's, or an :class:`EnsemblePredictor` of its members."""
        if ckpt.get("backend") == ENSEMBLE_BACKEND:  # an ensemble artefact predicts like one model
            return EnsemblePredictor.from_checkpoint_dict(ckpt, member_loader=cls._from_model_checkpoint, **kwargs)
        return cls._from_model_checkpoint(ckpt, **kwargs)

    @classmethod
    def _from_model_checkpoint(cls, ckpt: dict[str, Any], **kwargs: Any) -> Predictor:
        """A single model's predictor: the network rebuilt (:func:`emseg.models.rebuild_network`) with its
        normaliser, window and calibration offsets from the checkpoint; ``kwargs`` override them."""
        meta = ckpt["model"]
        model, spec = rebuild_network(ckpt)
        inference = ckpt.get("inference", {})
        if spec.spatial_dims == 3 and inference.get("window_3d") is not None:
            kwargs.setdefault("window_3d", tuple(inference["window_3d"]))
        kwargs.setdefault("spatial_dims", spec.spatial_dims)
        asked_window = kwargs.get("window") is not None  # the user's (--window): must fit the network
        kwargs.setdefault("window", tuple(inference.get("window", DEFAULT_WINDOW)))
        kwargs.setdefault("overlap", inference.get("overlap", DEFAULT_OVERLAP))
        kwargs.setdefault("grain_filter", list(ckpt.get("preprocess", {}).get("grain_filter", [])))
        calibrated = kwargs.pop("calibrated", True)
        if spec.backend != "random-forest":
            kwargs.setdefault("logit_offsets", inference.get("logit_offsets") if calibrated else None)
        predictor = cls(
            model,
            classes=ckpt["classes"],
            normalizer=Normalizer.from_dict(ckpt["normalization"]),
            context_slices=int(meta.get("context_slices", 1)),
            divisor=int(inference.get("divisor", DEFAULT_DIVISOR)),
            **kwargs,
        )
        if asked_window:
            predictor.check_window_fits()
        return predictor

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @torch.no_grad()
    def predict_proba_slice(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities of one raw slice.

        Args:
            image: ``(Y, X)`` raw slice or ``(C, Y, X)`` with context slices.

        Returns:
            ``(K, Y, X)`` float32 probabilities summing to 1 over ``K``.
        """
        return self._slice(image, "probabilities")

    @torch.no_grad()
    def predict_labels_slice(self, image: np.ndarray) -> np.ndarray:
        """Labels ``(Y, X)`` (uint8; uint16 past 256 classes) of one raw slice, as :meth:`predict_volume` gives them.

        For tiled networks this is the first class of largest blended logit, computed where the
        network ran (on a GPU only the labels come back) and without the softmax; else the argmax
        of :meth:`predict_proba_slice`.
        """
        return self._slice(image, "labels")

    def _slice(self, image: np.ndarray, output: str) -> np.ndarray:
        """``predict_proba_slice`` (``output="probabilities"``) or ``predict_labels_slice`` (``"labels"``)."""
        if not self._labels_from_logits:  # 3-D, random forest, valid padding: from their probabilities
            if self.spatial_dims == 3:  # a 3-D model sees the slice as a one-section volume
                probs = self.predict_proba_volume(np.asarray(image)[None])[:, 0]
            else:
                probs = self._untiled_proba(image)
            return probs if output == "probabilities" else first_argmax(probs)
        x = self._input(image)
        # Windows on a global grid (emseg.inference._tiling), shared with the blockwise engine.
        full = x.shape[1:]
        return self._tiled(x, origin=(0, 0), full_shape=full, region=(slice(0, full[0]), slice(0, full[1])),
                           output=output)

    def _input(self, image: np.ndarray) -> np.ndarray:
        """Normalised ``(C, Y, X)`` network input of a raw slice (grain-filter channels added)."""
        if self._grains is not None:
            image = add_grain_channels(np.asarray(image), self.grain_filter, self._grains(centre_slice(np.asarray(image))))
        x = self.normalizer(image)
        return x[None] if x.ndim == 2 else x

    @property
    def _labels_from_logits(self) -> bool:
        """Labels come straight from the blended logits (tiled 2-D networks; see :meth:`predict_labels_slice`)."""
        return self.spatial_dims == 2 and bool(self.is_torch) and not self.margin

    def _tiled(self, x: np.ndarray, *, origin, full_shape, region, output: str) -> np.ndarray:
        """``(K, ny, nx)`` probabilities or ``(ny, nx)`` labels (``output``) of ``region`` from normalised
        ``(C, h, w)`` input at ``origin``."""
        from emseg.inference._tiling import predict_region

        return predict_region(x, origin=origin, full_shape=full_shape, region=region, roi=self._roi(full_shape),
                              overlap=self.overlap, run=self._run, batch_size=self.batch_size,
                              num_classes=self.num_classes, output=output)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of a ``(N, C, ry, rx)`` host batch of windows (flips averaged as logits), offsets added.

        On a GPU the batch goes through pinned host memory with a non-blocking copy (the argmax and the
        blending then stay on the device, :func:`~emseg.inference._tiling.predict_region`).
        """
        return self._offset(self._flip_mean(self._to_device(batch), self._forward))

    def _run_raw(self, batch: torch.Tensor) -> torch.Tensor:
        """:meth:`_run` of a raw uint8 batch: copied as it is, normalised on the device through the
        normaliser's lookup table (:meth:`~emseg.data.Normalizer.lookup_table`: its exact float32 values)."""
        if self._table is None:  # a predictor keeps its device
            self._table = torch.from_numpy(self.normalizer.lookup_table(np.uint8)).to(self.device)
        x = torch.take(self._table, self._to_device(batch).long())
        return self._offset(self._flip_mean(x, self._forward))

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A host batch on the device: through pinned memory with a non-blocking copy on a GPU."""
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def slices_per_forward(self, shape: tuple[int, int]) -> int:
        """Slices of a ``(Y, X)`` shape run in one forward pass: :attr:`batch_size` where one window holds
        the whole slice (tiled 2-D networks, labels), else 1 (the batch is then windows of one slice)."""
        from emseg.inference._tiling import single_window

        if self.batch_size <= 1 or not self._labels_from_logits or self._whole_slices:
            return 1
        return self.batch_size if single_window(shape, self._roi(tuple(shape)), float(self.overlap)) else 1

    @torch.no_grad()
    def predict_labels_stack(self, images: Any) -> np.ndarray:
        """Labels ``(n, Y, X)`` of ``n`` raw slices (``(n, Y, X)`` or ``(n, C, Y, X)``), as :meth:`predict_volume`
        gives them for a volume of these slices: groups of :meth:`slices_per_forward` consecutive slices
        (from the first) share a forward pass."""
        images = [np.asarray(image) for image in images]
        if not images:
            raise ValueError("predict_labels_stack needs at least one slice")
        step = self.slices_per_forward(images[0].shape[-2:])
        if step == 1:
            return np.stack([self.predict_labels_slice(image) for image in images])
        return np.concatenate([self._labels_group(images[k:k + step]) for k in range(0, len(images), step)])

    @torch.no_grad()
    def _labels_group(self, images: list[np.ndarray], *, origin: tuple[int, int] = (0, 0),
                      full_shape: tuple[int, int] | None = None,
                      region: tuple[slice, slice] | None = None, deferred: bool = False) -> Any:
        """Labels ``(n, ny, nx)`` of ``region`` of ``n`` raw ``(Y, X)`` / ``(C, h, w)`` slices in one forward pass
        (one window per slice; default: the whole slices).

        uint8 slices travel raw and are normalised where the network runs (:meth:`_run_raw`: a quarter of
        the bytes to copy to a GPU, no float pass on the host); others are normalised here.  Both give the
        same float32 input, bit for bit.  ``deferred``: return a
        :class:`~emseg.inference._tiling.PendingLabels` (from a GPU the labels may still be on their way).
        """
        from emseg.inference._tiling import predict_single_window_labels

        # uint8 only: 16-bit integer tensors have few kernels on GPUs (torch 2.x), and EM is mostly 8-bit
        raw = self._grains is None and np.asarray(images[0]).dtype == np.uint8
        if raw:
            inputs = [image[None] if image.ndim == 2 else image for image in map(np.asarray, images)]
        else:
            inputs = [self._input(image) for image in images]
        full = tuple(full_shape or inputs[0].shape[1:])
        region = region or (slice(0, full[0]), slice(0, full[1]))
        return predict_single_window_labels(inputs, origin=origin, full_shape=full, region=region,
                                            roi=self._roi(full), run=self._run_raw if raw else self._run,
                                            num_classes=self.num_classes, raw=raw, deferred=deferred)

    def _flip_mean(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``fn(x)``; with test-time augmentation the mean of ``fn`` over ``x`` and its flips, each flipped back.

        The one TTA loop: ``x`` is ``(N, C, ..., Y, X)``; the flips are along x, y and both (:data:`TTA_FLIPS`).
        """
        flips = TTA_FLIPS if self.tta else ((),)
        total = None
        for dims in flips:
            out = fn(torch.flip(x, dims) if dims else x)
            out = torch.flip(out, dims) if dims else out
            total = out if total is None else total + out
        return total / len(flips) if len(flips) > 1 else total

    def _offset(self, logits: torch.Tensor) -> torch.Tensor:
        """``(N, K, ...)`` logits plus the calibration offsets of the checkpoint (if any)."""
        if self.logit_offsets is None:
            return logits
        shape = (1, -1) + (1,) * (logits.ndim - 2)
        return logits + self.logit_offsets.to(logits.device).view(shape)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 logits of one batch of windows through this predictor's route (:class:`NetworkRunner`)."""
        if self._runner is None:
            raise RuntimeError("the int8 route needs calibrate_int8(slice) before predicting")
        return self._runner(batch)


# An ensemble is used wherever one model is (``isinstance(p, Predictor)`` in code written for one model):
# a virtual subclass, sharing the interface (SegmentationPredictor) but none of the implementation.
Predictor.register(EnsemblePredictor)


def load_predictor(path: str | os.PathLike, **options: Any) -> SegmentationPredictor:
    """The predictor of a model file: a single model's, an ensemble's or an exported network's.

    Args:
        path: a run directory or ``model.pt`` written by ``emseg train`` / ``emseg ensemble`` (loaded with
            ``weights_only=True``, :func:`emseg.models.load_checkpoint`), or an ``.onnx`` / bioimage.io ``.zip``
            written by ``emseg export``.
        options: :class:`Predictor` options (``precision``, ``tta``, ``window``, ``overlap``, ``batch_size``,
            ``device``, ``jit``, ``calibrated``, ...); an ensemble passes them to every member.

    Returns:
        A :class:`Predictor`, an :class:`EnsemblePredictor` or the exported network's :class:`Predictor`,
        all satisfying :class:`SegmentationPredictor`.

    Raises:
        emseg.models.CheckpointError: not a usable emseg model; the message names the file and the problem.
    """
    if str(path).lower().endswith(EXPORTED_SUFFIXES):
        from emseg.inference._exported import load_exported  # it builds a Predictor: imported when called

        return load_exported(path, **options)
    return Predictor.from_checkpoint_dict(load_checkpoint(path), **options)


_probe_receptive_radius = probe_receptive_radius  # its former name here (tests, callers of the old module)

"""Sliding-window prediction of 2-D slices and stacks, from a checkpoint."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from emseg._device import autocast, default_device, resolve_precision
from emseg.constants import EXPORTED_SUFFIXES  # files written by ``emseg export``: read by inference._exported
from emseg.data import context_stack as _context_stack
from emseg.data import Normalizer
from emseg.inference._ensemble import EnsemblePredictor
from emseg.inference._outputs import check_options
from emseg.inference._protocol import SegmentationPredictor, volume_labels
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


class Predictor(SegmentationPredictor):
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
    ) -> None:
        from emseg.data._grain import GrainFilterCache

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
        self.jit = bool(jit)
        if self.jit and (self.device.type != "cpu" or self.dtype is not None):
            # The frozen copy is traced in fp32 (TorchScript does not freeze autocast). Under bf16 (native on
            # this CPU, or asked for) eager bf16 is the faster route: 1.05 vs 0.47 MVox/s for the frozen fp32
            # copy on a 2-core AMX CPU (issue 21), so --jit gives way to the precision rather than the reverse.
            route = ("on a GPU" if self.device.type != "cpu"
                     else "under bf16 (precision 'auto' on a CPU with native bf16, or 'bf16')")
            logger.warning("jit: the frozen TorchScript copy is a CPU fp32 route; %s the windows run eagerly. "
                           "Use --precision fp32 --jit to force the frozen fp32 copy.", route)
            self.jit = False
        check_options(window=tuple(window), batch_size=batch_size)
        self.logit_offsets = None
        if logit_offsets is not None:
            offsets = np.asarray(logit_offsets, np.float32)
            if offsets.shape != (len(self.classes),) or not np.isfinite(offsets).all():
                raise ValueError(f"logit_offsets must be {len(self.classes)} finite numbers (one per class), "
                                 f"got {list(np.ravel(logit_offsets))}")
            self.logit_offsets = None if not offsets.any() else torch.from_numpy(offsets)
        self._jit_module: Any = None
        self._jit_checked: set[tuple[int, ...]] = set()
        if overlap == "auto":
            self.overlap = self.auto_overlap()
        elif not isinstance(overlap, (int, float)) or not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be a fraction in [0, 1) or 'auto', got {overlap!r}")

    def check_window_fits(self) -> None:
        """Raise a ValueError if :attr:`window` does not fit the network (checked for a window the user asked for).

        A tiled 2-D network halves its input ``log2(divisor)`` times: each window side must be a multiple
        of its ``divisor`` (so at least that).  Networks without a ``divisor`` attribute are not checked.
        """
        if not (self.is_torch and self.spatial_dims == 2 and not self.margin):
            return
        divisor = getattr(self.model, "divisor", None)
        if divisor is None:
            return
        d = int(max(divisor)) if isinstance(divisor, (tuple, list)) else int(divisor)
        if d <= 1 or all(w % d == 0 for w in self.window):
            return
        wy, wx = self.window
        up = [max(d, -(-w // d) * d) for w in self.window]
        problem = (f"is too small for this network: the minimum is {d} x {d}" if min(self.window) < d
                   else f"does not fit this network: each side must be a multiple of {d}")
        raise ValueError(f"window {wy} x {wx} (--window) {problem} (it halves its input "
                         f"{int(round(math.log2(d)))} time{'' if d == 2 else 's'}); use e.g. --window {up[0]} {up[1]}, or leave --window out "
                         "to use the model's own window")

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

    def _roi(self, shape: tuple[int, int]) -> tuple[int, int]:
        d = self.divisor
        return tuple(min(w, math.ceil(s / d) * d) for w, s in zip(self.window, shape))

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
            from emseg.data._grain import add_grain_channels, centre_slice

            image = add_grain_channels(np.asarray(image), self.grain_filter, self._grains(centre_slice(np.asarray(image))))
        x = self.normalizer(image)
        return x[None] if x.ndim == 2 else x

    def _untiled_proba(self, image: np.ndarray) -> np.ndarray:
        """Probabilities of a slice for the random forest and valid-padding networks (no blended windows)."""
        x = self._input(image)
        if not self.is_torch:
            return self.model.predict_proba(x[0])
        # valid-padding network: output tiles stitched exactly (no blending)
        tensor = torch.from_numpy(x)[None].to(self.device)

        def probabilities(inp: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.dtype):
                logits = self._valid_padding_logits(inp)
            return torch.softmax(self._offset(logits.float()), dim=1)

        return self._flip_mean(tensor, probabilities)[0].cpu().numpy()

    def _valid_padding_logits(self, image: torch.Tensor) -> torch.Tensor:
        """``(1, C, Y, X)`` -> ``(1, K, Y, X)`` logits of a valid-padding model by stitched output tiles."""
        from emseg.inference._valid_tiling import predict_valid_tiles

        return predict_valid_tiles(self.model, image, window=self.window, batch_size=self.batch_size)

    @torch.no_grad()
    def predict_proba_volume(self, volume: Any) -> np.ndarray:
        """Class probabilities of every voxel of a raw ``(Z, Y, X)`` volume (or block).

        The contract blockwise prediction builds on: the input is the *raw*
        (unnormalised) array, any dtype, held in memory (or anything
        ``np.asarray`` reads); the output covers exactly the same voxels. 2-D
        models (and 2.5-D ones with context slices, read from within the block)
        predict slice by slice; 3-D models run a Gaussian-blended sliding window
        of :attr:`window_3d` (z clipped to the volume's depth, y/x to its size)
        over the whole volume. Nothing outside the block is seen: give a block a
        halo to avoid edge effects at its borders.

        Args:
            volume: ``(Z, Y, X)`` raw intensities.

        Returns:
            ``(K, Z, Y, X)`` float32 probabilities summing to 1 over ``K``.
        """
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise ValueError(f"volume must be (Z, Y, X), got shape {volume.shape}")
        if self.spatial_dims != 3:
            probs = np.empty((self.num_classes, *volume.shape), np.float32)
            for z, p in self.iter_slices(volume):
                probs[:, z] = p
            return probs
        from monai.inferers import sliding_window_inference

        tensor = torch.from_numpy(self.normalizer(volume))[None, None].to(self.device)
        roi = tuple(min(w, s) for w, s in zip(self.window_3d, volume.shape))

        def probabilities(inp: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.dtype):
                logits = sliding_window_inference(inp, roi_size=roi, sw_batch_size=self.batch_size, predictor=self.model,
                                                  overlap=self.overlap, mode="gaussian", padding_mode="reflect")
            return torch.softmax(self._offset(logits.float()), dim=1)

        return self._flip_mean(tensor, probabilities)[0].cpu().numpy().astype(np.float32, copy=False)

    @property
    def _labels_from_logits(self) -> bool:
        """Labels come straight from the blended logits (tiled 2-D networks; see :meth:`predict_labels_slice`)."""
        return self.spatial_dims == 2 and bool(self.is_torch) and not self.margin

    def _slice_input(self, volume: Any, z: int) -> np.ndarray:
        """Raw slice ``z`` of ``volume``, with its context slices for 2.5-D models."""
        if self.context_slices == 1:
            return np.asarray(volume[z])
        return _context_stack(volume, z, self.context_slices)

    def iter_slices(self, volume: Any, *, progress: Callable[[int], None] | None = None):
        """Yield ``(z, probabilities (K, Y, X))`` for every slice of a ``(Z, Y, X)`` volume."""
        for z in range(volume.shape[0]):
            yield z, self.predict_proba_slice(self._slice_input(volume, z))
            if progress is not None:
                progress(1)

    def predict_volume(
        self, volume: Any, *, probabilities: bool = False, progress: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Segment a whole ``(Z, Y, X)`` volume held in memory or read lazily.

        Returns:
            labels ``(Z, Y, X)`` uint8 (uint16 for > 255 classes) and, if asked,
            probabilities ``(K, Z, Y, X)`` float32.
        """
        if self.spatial_dims == 3 or probabilities or not self._labels_from_logits:
            return volume_labels(self, volume, probabilities=probabilities, progress=progress)
        z, y, x = volume.shape
        labels = np.empty((z, y, x), np.uint8 if self.num_classes <= 255 else np.uint16)
        for k in range(z):  # tiled 2-D network: labels from the blended logits, no softmax, no probability copy
            labels[k] = self.predict_labels_slice(self._slice_input(volume, k))
            if progress is not None:
                progress(1)
        return labels, None

    # ------------------------------------------------------------------ blockwise seam
    # The blockwise engine (emseg.inference._blockwise) relies on exactly these:
    # ``classes``, ``block_input(region, shape)``, ``predict_proba_block(data, origin=, region=, shape=)``
    # and ``predict_proba_volume(volume)``; any predictor offering them (3-D models,
    # ensembles) runs blockwise, in parallel and on Dask unchanged.

    @property
    def _whole_slices(self) -> bool:
        """Predictions that need the whole slice: random forest (filters), grain-filter input, valid-padding tiles."""
        return not self.is_torch or self._grains is not None or bool(self.margin)

    def receptive_radius(self) -> int:
        """Receptive-field radius of the network in pixels, measured with a gradient probe.

        The gradient of one central output pixel with respect to a random input
        is non-zero exactly inside the receptive field; its largest distance
        from the centre is the radius (0 for the random forest: not a network).
        """
        if self._receptive_radius is None:
            self._receptive_radius = _probe_receptive_radius(self.model, self.context_slices + len(self.grain_filter),
                                                             self.window,
                                                             self.divisor) if self.is_torch else 0
        return self._receptive_radius

    def auto_overlap(self) -> float:
        """Window overlap from the model's needs: receptive-field radius / window, in [1/16, 1/2].

        3-D and valid-padding networks (not probed in 2-D; valid-padding tiles do not overlap) use 0.25.
        """
        if self.spatial_dims == 3 or self.margin:
            return 0.25
        radius = self.receptive_radius()
        return float(min(0.5, max(1.0 / 16, radius / min(self.window))))

    def _tiled(self, x: np.ndarray, *, origin, full_shape, region, output: str) -> np.ndarray:
        """``(K, ny, nx)`` probabilities or ``(ny, nx)`` labels (``output``) of ``region`` from normalised
        ``(C, h, w)`` input at ``origin``."""
        from emseg.inference._tiling import predict_region

        def run(batch: torch.Tensor) -> torch.Tensor:  # blended logits (flips averaged as logits), then offsets
            return self._offset(self._flip_mean(batch.to(self.device), self._forward))

        return predict_region(x, origin=origin, full_shape=full_shape, region=region, roi=self._roi(full_shape),
                              overlap=self.overlap, run=run, batch_size=self.batch_size, num_classes=self.num_classes,
                              output=output)

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
        """Float32 logits of one batch of windows: eager, or the frozen TorchScript copy (``jit``)."""
        if not (self.jit and self.device.type == "cpu" and self.dtype is None):  # None: plain fp32
            with autocast(self.device, self.dtype):
                return self.model(batch).float()
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

    @property
    def halo(self) -> tuple[int, int, int]:
        """Input voxels ``(z, y, x)`` each side of a block needed for an exact result (an upper bound).

        2-D/2.5-D: the context slices along z and one window in-plane; 3-D: one window on each axis.
        """
        if self.spatial_dims == 3:
            return tuple(int(w) for w in self.window_3d)  # type: ignore[return-value]
        return (self.context_slices // 2, *self.window[-2:])

    def block_input(self, region: tuple[slice, slice, slice], shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        """Input box (global coordinates) to read for predicting output ``region`` of a ``shape`` volume."""
        from emseg.inference._tiling import input_box

        zs, ys, xs = region
        half = self.context_slices // 2
        z = slice(max(0, zs.start - half), min(shape[0], zs.stop + half))
        if self._whole_slices:  # filters over the whole slice
            return z, slice(0, shape[1]), slice(0, shape[2])
        y, x = input_box(shape[1:], self._roi(shape[1:]), self.overlap, self.batch_size, (ys, xs))
        return z, y, x

    @torch.no_grad()
    def predict_proba_block(self, data: np.ndarray, *, origin: tuple[int, int, int],
                            region: tuple[slice, slice, slice], shape: tuple[int, int, int]) -> np.ndarray:
        """Probabilities ``(K, nz, ny, nx)`` of ``region``, identical to the same voxels of the whole volume.

        Args:
            data: raw ``(z, y, x)`` voxels of (at least) :meth:`block_input` of ``region``.
            origin: global ``(z, y, x)`` of ``data[0, 0, 0]``.
            region: output box, global coordinates (step 1).
            shape: ``(Z, Y, X)`` of the whole volume.
        """
        return self._block(data, origin, region, shape, "probabilities")

    @torch.no_grad()
    def predict_labels_block(self, data: np.ndarray, *, origin: tuple[int, int, int],
                             region: tuple[slice, slice, slice], shape: tuple[int, int, int]) -> np.ndarray:
        """Labels ``(nz, ny, nx)`` of ``region``, identical to the same voxels of :meth:`predict_volume`.

        Arguments as :meth:`predict_proba_block`; no probabilities are formed for tiled networks.
        """
        return self._block(data, origin, region, shape, "labels")

    def _block(self, data, origin, region, shape, output: str) -> np.ndarray:
        zs, ys, xs = region
        oz, oy, ox = origin
        half = self.context_slices // 2
        size = (zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start)
        if output == "labels":
            out = np.empty(size, np.uint8 if self.num_classes <= 256 else np.uint16)
        else:
            out = np.empty((self.num_classes, *size), np.float32)
        for i, z in enumerate(range(zs.start, zs.stop)):
            ks = np.clip(np.arange(z - half, z + half + 1), 0, shape[0] - 1) - oz
            if self._whole_slices:  # the block holds whole slices (block_input): exactly the in-memory route
                res = self._slice(data[ks] if self.context_slices > 1 else data[ks[0]], output)
                res = res[..., ys.start - oy:ys.stop - oy, xs.start - ox:xs.stop - ox]
            else:
                res = self._tiled(self.normalizer(data[ks]), origin=(oy, ox), full_shape=shape[1:], region=(ys, xs),
                                  output=output)
            out[..., i, :, :] = res
        return out


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


def _probe_receptive_radius(model: torch.nn.Module, channels: int, window: tuple[int, int], divisor: int) -> int:
    """Largest distance from the centre where d(output centre)/d(input) is non-zero (random input, eval mode)."""
    size = max(divisor, min(window) // divisor * divisor)
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
        return 0
    return int(max(c - ys.min(), ys.max() - c, c - xs.min(), xs.max() - c))

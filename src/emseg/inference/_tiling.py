"""Sliding windows on a fixed GLOBAL grid, so any region of a slice is predicted bit for bit alike.

MONAI's ``sliding_window_inference`` places its windows relative to the array it
is given, so predicting a slice in pieces (out-of-core blocks) blends different
windows than predicting it whole and the labels differ along the seams.  Here the
window grid is a function of the whole slice's shape only (window ``r``, stride
``r * (1 - overlap)``, the last window flush with the end, as MONAI places them
on a whole slice), and every output pixel is blended from the windows that cover
it, accumulated in the same global order whichever region is asked for.  The
in-memory prediction (:meth:`Predictor.predict_proba_slice`) and the blockwise
engine both call :func:`predict_region`, so they agree exactly.

Batches are fixed globally too: the slice's windows, in row-major order, are cut
into consecutive groups of ``batch_size``, and a region runs every group holding a
window it needs (whole groups, so each window is computed in exactly the same
tensor as in the whole-slice pass, and no batch is padded).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["axis_windows", "first_argmax", "gaussian_window", "input_box", "predict_region",
           "PendingLabels", "launch_ahead", "predict_single_window_labels", "single_window", "softmax",
           "window_batches"]


def axis_windows(size: int, roi: int, overlap: float) -> list[int]:
    """Start positions of the windows along one axis of length ``size``.

    ``roi >= size`` gives one window at 0 (the axis is padded to ``roi``).
    """
    if roi >= size:
        return [0]
    stride = max(1, int(roi * (1.0 - overlap)))
    n = math.ceil((size - roi) / stride) + 1
    return sorted({min(i * stride, size - roi) for i in range(n)})


def window_batches(full_shape: Sequence[int], roi: tuple[int, int], overlap: float, batch_size: int
                   ) -> list[list[tuple[int, int]]]:
    """The slice's window starts ``(y, x)`` (padded coordinates shifted back, see :func:`predict_region`),
    row-major, cut into consecutive batches of ``batch_size``."""
    starts = []
    for size, r in zip(full_shape, roi):
        diff = max(r - int(size), 0)
        starts.append([s - diff // 2 for s in axis_windows(int(size) + diff, r, overlap)])
    windows = [(y, x) for y in starts[0] for x in starts[1]]
    return [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]


def _needed(batches, roi, region):
    (ys, xs), (ry, rx) = region, roi
    return [b for b in batches if any(y < ys.stop and y + ry > ys.start and x < xs.stop and x + rx > xs.start
                                      for y, x in b)]


def input_box(full_shape: Sequence[int], roi: tuple[int, int], overlap: float, batch_size: int,
              region: tuple[slice, slice]) -> tuple[slice, slice]:
    """Input ``(slice_y, slice_x)`` needed to predict ``region`` exactly (the windows of its batches, clipped)."""
    batches = _needed(window_batches(full_shape, roi, overlap, batch_size), roi, region)
    windows = [w for b in batches for w in b]
    box = []
    for axis, (size, r) in enumerate(zip(full_shape, roi)):
        lo = min(w[axis] for w in windows)
        hi = max(w[axis] for w in windows) + r
        box.append(slice(max(0, lo), min(int(size), hi)))
    return box[0], box[1]


_GAUSS_CACHE: dict[tuple[int, int], np.ndarray] = {}


def gaussian_window(roi: tuple[int, int]) -> np.ndarray:
    """``(ry, rx)`` float32 Gaussian importance map, sigma = roi / 8 (as MONAI's ``mode="gaussian"``)."""
    key = tuple(int(r) for r in roi)
    if key not in _GAUSS_CACHE:
        axes = []
        for r in key:
            c = (r - 1) / 2.0
            sigma = r * 0.125
            axes.append(np.exp(-0.5 * ((np.arange(r) - c) / sigma) ** 2))
        g = np.outer(axes[0], axes[1])
        g = g / g.max()
        _GAUSS_CACHE[key] = np.maximum(g, 1e-3).astype(np.float32)  # no zero weight at the corners
    return _GAUSS_CACHE[key]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 of ``(K, ...)`` float32, elementwise so any crop gives the same values."""
    m = logits.max(axis=0, keepdims=True)
    e = np.exp(logits - m)
    return e / e.sum(axis=0, keepdims=True)


def first_argmax(scores: np.ndarray) -> np.ndarray:
    """``np.argmax(scores, axis=0)`` as uint8 (uint16 past 256 classes), ties to the first class, several x faster.

    ``torch.max(dim=0)`` over contiguous ``(Y, X)`` planes, on torch's threads, instead of numpy's
    strided reduction over a short axis 0 (11 ms instead of 40-65 ms for 7 x 768 x 1024 float32 at
    two threads here); its indices are those of the first maximal value, as numpy's.
    """
    scores = np.asarray(scores)
    dtype = np.uint8 if scores.shape[0] <= 256 else np.uint16
    if scores.size == 0:
        return np.zeros(scores.shape[1:], dtype)
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float32)
    if not scores.flags.writeable:  # torch.from_numpy wants a writable buffer (it never writes here)
        scores = scores.copy()
    indices = torch.max(torch.from_numpy(np.ascontiguousarray(scores)), dim=0).indices
    return indices.to(torch.uint8 if dtype == np.uint8 else torch.int32).numpy().astype(dtype, copy=False)


def _pad_to_roi(image: np.ndarray, origin: Sequence[int], full_shape: tuple[int, int], roi: tuple[int, int]
                ) -> tuple[np.ndarray, tuple[int, int]]:
    """``image`` with the axes shorter than their window padded by reflection (the whole axis is in ``image``
    then), and its origin shifted accordingly."""
    (Y, X), (ry, rx) = full_shape, roi
    oy, ox = int(origin[0]), int(origin[1])
    pads = [(max(r - size, 0) // 2, max(r - size, 0) - max(r - size, 0) // 2) for size, r in ((Y, ry), (X, rx))]
    if any(p for pair in pads for p in pair):
        mode = "reflect" if all(size > max(pair) for size, pair in zip((Y, X), pads)) else "edge"
        image = np.pad(image, ((0, 0), *pads), mode=mode)
        oy, ox = oy - pads[0][0], ox - pads[1][0]
    return image, (oy, ox)


def single_window(full_shape: Sequence[int], roi: tuple[int, int], overlap: float) -> bool:
    """The window grid of a ``full_shape`` slice is one window (it holds the whole slice)."""
    return all(len(axis_windows(int(s) + max(r - int(s), 0), r, overlap)) == 1 for s, r in zip(full_shape, roi))


def predict_single_window_labels(
    images: Sequence[np.ndarray],
    *,
    origin: Sequence[int],
    full_shape: Sequence[int],
    region: tuple[slice, slice],
    roi: tuple[int, int],
    run: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    blend_in_torch: bool | None = None,
    raw: bool = False,
    deferred: bool = False,
) -> np.ndarray | PendingLabels:
    """Labels ``(n, ny, nx)`` of ``region`` of ``n`` slices whose window grid is one window, in ONE forward pass.

    One window holds the whole slice: every pixel has one logit vector and a positive weight, so the
    labels are its argmax, whichever region is asked for (no blending buffers).  The slices' windows
    form one batch ``(n, C, ry, rx)``: several slices per forward (the routes' ``bN`` with a whole-slice
    window).  The callers fix which slices share a batch globally (consecutive groups of ``n`` along z),
    so in-memory and blockwise prediction run the same tensors.

    Args:
        images: ``n`` normalised ``(C, h, w)`` inputs, each covering the whole window (as in :func:`predict_region`);
            with ``raw``, raw slices that ``run`` normalises (the batch keeps their dtype).
        deferred: return a :class:`PendingLabels` (the labels may still be on their way back from a GPU).
        origin, full_shape, region, roi, run, num_classes, blend_in_torch: as :func:`predict_region`
            (``region`` and ``origin`` the same for every slice).
    """
    (ys, xs), (Y, X) = region, tuple(int(s) for s in full_shape)
    (y, x), = window_batches((Y, X), roi, 0.0, 1)[0]
    ry, rx = roi
    crops = []
    for image in images:
        padded, (oy, ox) = _pad_to_roi(image, origin, (Y, X), roi)
        crops.append(padded[:, y - oy:y - oy + ry, x - ox:x - ox + rx])
    batch = np.ascontiguousarray(np.stack(crops), dtype=None if raw else np.float32)
    logits = run(torch.from_numpy(batch)).float()[:, :, ys.start - y:ys.stop - y, xs.start - x:xs.stop - x]
    if logits.device.type == "cpu" and not blend_in_torch:
        pending = PendingLabels(np.stack([first_argmax(item) for item in logits.numpy()]))
    else:
        pending = PendingLabels.from_device(torch.argmax(logits, dim=1), num_classes)
    return pending if deferred else pending.result()


def launch_ahead(groups: Sequence[Any], launch: Callable[[Any], PendingLabels]):
    """Yield ``(group, labels)`` for each group in order, launching the next group before waiting for one's labels.

    ``launch(group)`` starts a group's forward pass and returns its :class:`PendingLabels`; a group's labels
    are collected only after the next group is launched, so on a GPU the host prepares and launches a
    group while the device still computes the one before (on the CPU the order changes nothing).
    """
    in_flight = None
    for group in groups:
        launched = (group, launch(group))
        if in_flight is not None:
            yield in_flight[0], in_flight[1].result()
        in_flight = launched
    if in_flight is not None:
        yield in_flight[0], in_flight[1].result()


class PendingLabels:
    """Labels of one forward pass, possibly still on their way back from a GPU; :meth:`result` waits for them.

    From a GPU (:meth:`from_device`) the labels are copied into pinned host memory without blocking and an
    event marks the end of the copy, so the host can prepare and launch the next group of slices while
    the GPU still works on this one (the engine collects a group after launching the next).  On the CPU
    the labels are ready when made.
    """

    def __init__(self, labels: np.ndarray | torch.Tensor, event: Any = None, *, widen: bool = False) -> None:
        self._labels, self._event, self._widen = labels, event, widen

    @classmethod
    def from_device(cls, labels: torch.Tensor, num_classes: int) -> PendingLabels:
        """``labels`` (an argmax, on the CPU or a GPU) as uint8, or uint16 past 256 classes."""
        widen = num_classes > 256
        labels = labels if widen else labels.to(torch.uint8)
        if labels.device.type != "cuda":
            return cls(labels.cpu().numpy(), widen=widen)
        host = torch.empty(labels.shape, dtype=labels.dtype, pin_memory=True)
        host.copy_(labels, non_blocking=True)
        event = torch.cuda.Event()
        event.record()  # on the current stream, after the copy
        return cls(host, event, widen=widen)

    def result(self) -> np.ndarray:
        """The labels ``(n, ny, nx)`` as a host array (waits for the copy from a GPU)."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        labels = self._labels.numpy() if isinstance(self._labels, torch.Tensor) else self._labels
        return labels.astype(np.uint16) if self._widen else labels


def predict_region(
    image: np.ndarray,
    *,
    origin: Sequence[int],
    full_shape: Sequence[int],
    region: tuple[slice, slice],
    roi: tuple[int, int],
    overlap: float,
    run: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    num_classes: int,
    output: str = "logits",
    blend_in_torch: bool | None = None,
) -> np.ndarray:
    """Blended logits, probabilities or labels of ``region`` of a slice, from the global window grid.

    Blending runs where ``run`` leaves its logits: in numpy on the CPU, in torch
    on an accelerator, so only the result crosses back to the host (one byte a
    pixel for labels). Labels are the first class of largest blended logit,
    which skips the softmax: the same class as the argmax of the probabilities
    except where two probabilities round to the same float32.

    Args:
        image: ``(C, h, w)`` float32 normalised input covering at least
            :func:`input_box` of ``region``.
        origin: ``(y0, x0)`` of ``image`` in the slice.
        full_shape: ``(Y, X)`` of the whole slice (fixes the window grid).
        region: output ``(slice_y, slice_x)`` in slice coordinates (step 1).
        roi: window ``(ry, rx)``; an axis shorter than its window is padded
            symmetrically by reflection (as MONAI does).
        overlap: fraction of the window shared by neighbours.
        run: maps ``(N, C, ry, rx)`` to ``(N, K, ry, rx)`` logits.
        batch_size: windows per forward pass (batches fixed on the global grid).
        num_classes: ``K``.
        output: ``"logits"``; ``"probabilities"`` (their softmax over ``K``);
            ``"labels"`` (:func:`first_argmax` of the logits).
        blend_in_torch: blend with torch on the logits' device (default: when
            that device is not the CPU).

    Returns:
        ``(K, ny, nx)`` float32 blended logits or probabilities, or ``(ny, nx)`` labels, of ``region``.
    """
    if output not in ("logits", "probabilities", "labels"):
        raise ValueError(f"output must be 'logits', 'probabilities' or 'labels', got {output!r}")
    (ys, xs), (Y, X) = region, tuple(int(s) for s in full_shape)
    out_y0, out_y1, out_x0, out_x1 = ys.start, ys.stop, xs.start, xs.stop
    ry, rx = roi
    grid = window_batches((Y, X), roi, overlap, batch_size)
    if output == "labels" and len(grid) == 1 and len(grid[0]) == 1:
        return predict_single_window_labels([image], origin=origin, full_shape=full_shape, region=region, roi=roi,
                                            run=run, num_classes=num_classes, blend_in_torch=blend_in_torch)[0]
    image, (oy, ox) = _pad_to_roi(image, origin, (Y, X), roi)
    batches = _needed(grid, roi, region)
    g = gaussian_window((ry, rx))
    acc = weight = None
    channels = image.shape[0]
    for chunk in batches:
        batch = np.empty((len(chunk), channels, ry, rx), np.float32)
        for i, (y, x) in enumerate(chunk):
            batch[i] = image[:, y - oy:y - oy + ry, x - ox:x - ox + rx]
        logits = run(torch.from_numpy(batch)).float()
        if acc is None:  # blend where the network ran: numpy on CPU, torch on an accelerator (no logits copied back)
            on_host = not blend_in_torch if blend_in_torch is not None else logits.device.type == "cpu"
            shape = (num_classes, out_y1 - out_y0, out_x1 - out_x0)
            acc = np.zeros(shape, np.float32) if on_host else torch.zeros(shape, device=logits.device)
            weight = np.zeros(shape[1:], np.float32) if on_host else torch.zeros(shape[1:], device=logits.device)
            gw_all = g if on_host else torch.from_numpy(g).to(logits.device)
        if on_host:
            logits = logits.numpy()
        for i, (y, x) in enumerate(chunk):
            a0, a1 = max(y, out_y0), min(y + ry, out_y1)
            c0, c1 = max(x, out_x0), min(x + rx, out_x1)
            if a0 >= a1 or c0 >= c1:
                continue  # computed only to keep the batch identical to the whole-slice pass
            gw = gw_all[a0 - y:a1 - y, c0 - x:c1 - x]
            acc[:, a0 - out_y0:a1 - out_y0, c0 - out_x0:c1 - out_x0] += logits[i, :, a0 - y:a1 - y, c0 - x:c1 - x] * gw
            weight[a0 - out_y0:a1 - out_y0, c0 - out_x0:c1 - out_x0] += gw
    if output == "labels":  # the weights are positive: the argmax of acc is that of acc / weight
        if on_host:
            return first_argmax(acc)
        labels = torch.argmax(acc, dim=0)
        return labels.to(torch.uint8).cpu().numpy() if num_classes <= 256 else labels.cpu().numpy().astype(np.uint16)
    blended = acc / weight
    if on_host:
        return softmax(blended) if output == "probabilities" else blended
    return (torch.softmax(blended, dim=0) if output == "probabilities" else blended).cpu().numpy()

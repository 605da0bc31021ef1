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

Each batch of windows is padded to ``batch_size`` windows, so the network always
sees the same tensor shape (the CPU kernels then compute each window identically
whatever its neighbours in the batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["axis_windows", "gaussian_window", "input_span", "predict_region", "softmax"]


def axis_windows(size: int, roi: int, overlap: float) -> list[int]:
    """Start positions of the windows along one axis of length ``size``.

    ``roi >= size`` gives one window at 0 (the axis is padded to ``roi``).
    """
    if roi >= size:
        return [0]
    stride = max(1, int(roi * (1.0 - overlap)))
    n = math.ceil((size - roi) / stride) + 1
    return sorted({min(i * stride, size - roi) for i in range(n)})


def input_span(size: int, roi: int, overlap: float, start: int, stop: int) -> tuple[int, int]:
    """Input range ``[a, b)`` along one axis needed to predict output ``[start, stop)`` exactly."""
    if roi >= size:
        return 0, size
    starts = [s for s in axis_windows(size, roi, overlap) if s < stop and s + roi > start]
    return min(starts), max(starts) + roi


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
) -> np.ndarray:
    """Blended logits of ``region`` of a slice, from the global window grid.

    Args:
        image: ``(C, h, w)`` float32 normalised input covering at least
            :func:`input_span` of ``region`` on both axes.
        origin: ``(y0, x0)`` of ``image`` in the slice.
        full_shape: ``(Y, X)`` of the whole slice (fixes the window grid).
        region: output ``(slice_y, slice_x)`` in slice coordinates (step 1).
        roi: window ``(ry, rx)``; an axis shorter than its window is padded
            symmetrically by reflection (as MONAI does).
        overlap: fraction of the window shared by neighbours.
        run: maps ``(N, C, ry, rx)`` to ``(N, K, ry, rx)`` logits.
        batch_size: windows per forward pass (batches are padded to this size).
        num_classes: ``K``.

    Returns:
        ``(K, ny, nx)`` float32 blended logits of ``region``.
    """
    (ys, xs), (Y, X) = region, tuple(int(s) for s in full_shape)
    out_y0, out_y1, out_x0, out_x1 = ys.start, ys.stop, xs.start, xs.stop
    oy, ox = int(origin[0]), int(origin[1])
    ry, rx = roi
    # Pad axes shorter than the window (whole axis present in `image` then).
    pads = []
    for size, r in ((Y, ry), (X, rx)):
        diff = max(r - size, 0)
        pads.append((diff // 2, diff - diff // 2))
    if any(p for pair in pads for p in pair):
        mode = "reflect" if all(size > max(pair) for size, pair in zip((Y, X), pads)) else "edge"
        image = np.pad(image, ((0, 0), *pads), mode=mode)
        oy, ox = oy - pads[0][0], ox - pads[1][0]
        Yp, Xp = Y + sum(pads[0]), X + sum(pads[1])
        starts_y = [s - pads[0][0] for s in axis_windows(Yp, ry, overlap)]
        starts_x = [s - pads[1][0] for s in axis_windows(Xp, rx, overlap)]
    else:
        starts_y = axis_windows(Y, ry, overlap)
        starts_x = axis_windows(X, rx, overlap)
    windows = [(y, x) for y in starts_y if y < out_y1 and y + ry > out_y0
               for x in starts_x if x < out_x1 and x + rx > out_x0]
    g = gaussian_window((ry, rx))
    acc = np.zeros((num_classes, out_y1 - out_y0, out_x1 - out_x0), np.float32)
    weight = np.zeros((out_y1 - out_y0, out_x1 - out_x0), np.float32)
    channels = image.shape[0]
    for b in range(0, len(windows), batch_size):
        chunk = windows[b:b + batch_size]
        batch = np.zeros((batch_size, channels, ry, rx), np.float32)
        for i, (y, x) in enumerate(chunk):
            batch[i] = image[:, y - oy:y - oy + ry, x - ox:x - ox + rx]
        logits = run(torch.from_numpy(batch)).float().cpu().numpy()
        for i, (y, x) in enumerate(chunk):
            a0, a1 = max(y, out_y0), min(y + ry, out_y1)
            c0, c1 = max(x, out_x0), min(x + rx, out_x1)
            gw = g[a0 - y:a1 - y, c0 - x:c1 - x]
            acc[:, a0 - out_y0:a1 - out_y0, c0 - out_x0:c1 - out_x0] += logits[i, :, a0 - y:a1 - y, c0 - x:c1 - x] * gw
            weight[a0 - out_y0:a1 - out_y0, c0 - out_x0:c1 - out_x0] += gw
    return acc / weight

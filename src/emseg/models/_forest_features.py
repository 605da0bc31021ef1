"""The ilastik-style filter bank of the random-forest segmenter: Gaussian smoothing, Laplacian, gradient
magnitude, difference of Gaussians, structure-tensor and Hessian eigenvalues at every scale."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["FEATURE_SET", "PER_SIGMA"]

#: Identifies the filter bank; a checkpoint is only valid with the same bank.
FEATURE_SET = "ilastik-2d-v1"

_TRUNCATE = 4.0  # Gaussian kernels are cut at 4 sigma (scipy's default)
_DOG_RATIO = 0.66  # ilastik: DoG(sigma) = G(sigma) - G(0.66 * sigma)
_OUTER_RATIO = 0.5  # ilastik: structure tensor outer scale = 0.5 * sigma
_TRANSPOSE_ROWS = 8  # rows per block when reordering (F, Y, X) -> (Y, X, F)

# Per-sigma features in the order they are stored.
PER_SIGMA = (
    "gaussian_smoothing",
    "laplacian_of_gaussian",
    "gaussian_gradient_magnitude",
    "difference_of_gaussians",
    "structure_tensor_eigenvalue_1",
    "structure_tensor_eigenvalue_2",
    "hessian_of_gaussian_eigenvalue_1",
    "hessian_of_gaussian_eigenvalue_2",
)

def _radius(sigma: float) -> int:
    """Half-width in pixels of scipy's Gaussian kernel for ``sigma``."""
    return int(_TRUNCATE * float(sigma) + 0.5)


def _eigvals_2x2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of the symmetric matrices ``[[a, b], [b, c]]``, largest first."""
    mean = 0.5 * (a + c)
    root = np.sqrt((0.5 * (a - c)) ** 2 + b**2)
    return mean + root, mean - root


def _filter_bank(image: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """Compute the feature stack of a float32 ``(Y, X)`` image as ``(Y, X, F)`` float32."""
    n_features = 1 + len(PER_SIGMA) * len(sigmas)
    # Filled feature-first (contiguous writes), transposed in row blocks below:
    # writing each feature straight into (Y, X, F) is ~8x slower.
    stack = np.empty((n_features,) + image.shape, dtype=np.float32)
    stack[0] = image
    g1d = ndimage.gaussian_filter1d
    kw = dict(truncate=_TRUNCATE, mode="reflect")
    k = 1
    for sigma in sigmas:
        # Separable Gaussian derivatives: filter along Y once per derivative
        # order, then along X; shared between smoothing, gradient and Hessian.
        y0 = g1d(image, sigma, axis=0, order=0, **kw)
        y1 = g1d(image, sigma, axis=0, order=1, **kw)
        y2 = g1d(image, sigma, axis=0, order=2, **kw)
        smooth = g1d(y0, sigma, axis=1, order=0, **kw)
        dx = g1d(y0, sigma, axis=1, order=1, **kw)
        dxx = g1d(y0, sigma, axis=1, order=2, **kw)
        dy = g1d(y1, sigma, axis=1, order=0, **kw)
        dxy = g1d(y1, sigma, axis=1, order=1, **kw)
        dyy = g1d(y2, sigma, axis=1, order=0, **kw)
        del y0, y1, y2
        inner = ndimage.gaussian_filter(image, _DOG_RATIO * sigma, **kw)
        outer = _OUTER_RATIO * sigma
        jxx = ndimage.gaussian_filter(dx * dx, outer, **kw)
        jxy = ndimage.gaussian_filter(dx * dy, outer, **kw)
        jyy = ndimage.gaussian_filter(dy * dy, outer, **kw)
        st1, st2 = _eigvals_2x2(jxx, jxy, jyy)
        he1, he2 = _eigvals_2x2(dxx, dxy, dyy)
        for feature in (smooth, dxx + dyy, np.sqrt(dx * dx + dy * dy), smooth - inner, st1, st2, he1, he2):
            stack[k] = feature
            k += 1
    out = np.empty(image.shape + (n_features,), dtype=np.float32)
    for y in range(0, image.shape[0], _TRANSPOSE_ROWS):
        out[y : y + _TRANSPOSE_ROWS] = stack[:, y : y + _TRANSPOSE_ROWS].transpose(1, 2, 0)
    return out


def _as_image(image: np.ndarray, name: str) -> np.ndarray:
    """Validate a 2-D real image and return it as C-contiguous float32."""
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (Y, X) slice, got an array of shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values; normalise the image first")
    return arr



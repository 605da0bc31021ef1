"""ilastik-style random-forest pixel classifier, the classical baseline.

The deep-learning EM papers compare against ilastik's "Pixel Classification":
a fixed bank of multiscale filters computed on every pixel and a random forest
trained on a sparse, class-balanced sample of labelled pixels. This module
reproduces that recipe on 2-D slices with scipy.ndimage filters and a
scikit-learn ``RandomForestClassifier``.

The filters are written directly on ``scipy.ndimage.gaussian_filter1d`` rather
than taken from ``skimage.feature.multiscale_basic_features`` because that
function does not offer ilastik's difference-of-Gaussians, Laplacian or
structure-tensor features; sharing the 1-D Gaussian passes between the
smoothing, gradient and Hessian of one scale also saves filtering work
(9 one-dimensional passes per scale instead of 12).

Fitted forests are stored with :meth:`RandomForestSegmenter.state_dict` as
plain tensors (no pickled scikit-learn objects), so checkpoints load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from scipy import ndimage
from sklearn.ensemble import RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier
from sklearn.tree._tree import NODE_DTYPE, Tree

__all__ = ["RandomForestSegmenter"]

logger = logging.getLogger(__name__)

_FORMAT = "emseg.RandomForestSegmenter"
#: Version of the layout written by :meth:`RandomForestSegmenter.state_dict`.
FORMAT_VERSION = 1
#: Identifies the filter bank; a checkpoint is only valid with the same bank.
FEATURE_SET = "ilastik-2d-v1"

_TRUNCATE = 4.0  # Gaussian kernels are cut at 4 sigma (scipy's default)
_DOG_RATIO = 0.66  # ilastik: DoG(sigma) = G(sigma) - G(0.66 * sigma)
_OUTER_RATIO = 0.5  # ilastik: structure tensor outer scale = 0.5 * sigma
_CHUNK_PIXELS = 2**20  # default core size of one prediction chunk
_TRANSPOSE_ROWS = 8  # rows per block when reordering (F, Y, X) -> (Y, X, F)

# Per-sigma features in the order they are stored.
_PER_SIGMA = (
    "gaussian_smoothing",
    "laplacian_of_gaussian",
    "gaussian_gradient_magnitude",
    "difference_of_gaussians",
    "structure_tensor_eigenvalue_1",
    "structure_tensor_eigenvalue_2",
    "hessian_of_gaussian_eigenvalue_1",
    "hessian_of_gaussian_eigenvalue_2",
)
_TREE_ARRAYS = (
    "children_left",
    "children_right",
    "feature",
    "threshold",
    "value",
    "n_node_samples",
    "impurity",
    "weighted_n_node_samples",
)
# NODE_DTYPE field for each stored per-node array.
_NODE_FIELDS = {
    "children_left": "left_child",
    "children_right": "right_child",
    "feature": "feature",
    "threshold": "threshold",
    "impurity": "impurity",
    "n_node_samples": "n_node_samples",
    "weighted_n_node_samples": "weighted_n_node_samples",
    "missing_go_to_left": "missing_go_to_left",
}
_STATE_KEYS = (
    "format",
    "format_version",
    "feature_set",
    "hyper_parameters",
    "num_classes",
    "ignore_label",
    "classes",
    "n_features",
    "sample_counts",
    "trees",
)
_HYPER_KEYS = ("sigmas", "n_estimators", "max_depth", "samples_per_class", "random_state", "n_jobs")


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
    n_features = 1 + len(_PER_SIGMA) * len(sigmas)
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


def _tensor(array: np.ndarray) -> torch.Tensor:
    """Copy a numpy array into a tensor that owns its memory.

    64-bit integer arrays (node indices, feature ids, sample counts) are stored
    as int32 when that is lossless: a fully grown default forest has millions
    of nodes, and this keeps its checkpoint ~15 % smaller.
    """
    array = np.asarray(array)
    if array.dtype == np.int64 and array.size and -(2**31) <= array.min() and array.max() < 2**31:
        array = array.astype(np.int32)
    return torch.from_numpy(np.array(array, copy=True, order="C"))


class RandomForestSegmenter:
    """ilastik-style pixel classifier. Works on 2-D slices ``(Y, X)`` of normalised float32 images.

    Every pixel is described by the raw intensity plus, at each scale
    ``sigma`` (ilastik's default feature set, ``F = 1 + 8 * len(sigmas)``
    features, 49 for the default six scales):

    1. Gaussian smoothing ``G_sigma * I``;
    2. Laplacian of Gaussian ``I_xx + I_yy``;
    3. Gaussian gradient magnitude ``sqrt(I_x**2 + I_y**2)``;
    4. difference of Gaussians ``G_sigma * I - G_{0.66 sigma} * I``;
    5. -6. structure-tensor eigenvalues (inner scale ``sigma``, outer scale
       ``0.5 sigma``), largest first;
    7. -8. Hessian-of-Gaussian eigenvalues, largest first.

    Derivatives are Gaussian derivatives at scale ``sigma`` (kernels cut at
    4 sigma, reflecting borders). A scikit-learn ``RandomForestClassifier``
    (Gini, ``sqrt(F)`` features per split, bootstrap) is trained on up to
    ``samples_per_class`` pixels of every class.

    Parameters
    ----------
    sigmas
        Filter scales in pixels.
    n_estimators
        Number of trees.
    max_depth
        Maximum tree depth; ``None`` grows trees until leaves are pure.
    samples_per_class
        Labelled pixels drawn per class over all training slices.
    random_state
        Seed of the pixel sampling and of the forest.
    n_jobs
        Threads used to grow and evaluate the trees.

    Attributes
    ----------
    num_classes : int
        Number of classes of the output, set by :meth:`fit`.
    classes_ : numpy.ndarray
        ``(K,)`` class ids present in the training sample (K <= num_classes).
    sample_counts_ : numpy.ndarray
        ``(num_classes,)`` pixels sampled per class for training.
    """

    def __init__(
        self,
        *,
        sigmas: Sequence[float] = (0.7, 1.0, 1.6, 3.5, 5.0, 10.0),
        n_estimators: int = 100,
        max_depth: int | None = None,
        samples_per_class: int = 20000,
        random_state: int = 0,
        n_jobs: int = 2,
    ) -> None:
        sigmas = tuple(float(s) for s in sigmas)
        if not sigmas or not all(math.isfinite(s) and s > 0 for s in sigmas):
            raise ValueError(f"sigmas must be a non-empty sequence of positive scales, got {sigmas}")
        if int(n_estimators) < 1:
            raise ValueError(f"n_estimators must be >= 1, got {n_estimators}")
        if max_depth is not None and int(max_depth) < 1:
            raise ValueError(f"max_depth must be None or >= 1, got {max_depth}")
        if int(samples_per_class) < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
        if int(n_jobs) == 0:
            raise ValueError("n_jobs must be a positive number of threads or -1 for all cores, got 0")
        self.sigmas = sigmas
        self.n_estimators = int(n_estimators)
        self.max_depth = None if max_depth is None else int(max_depth)
        self.samples_per_class = int(samples_per_class)
        self.random_state = int(random_state)
        self.n_jobs = int(n_jobs)
        self.num_classes: int | None = None
        self.ignore_label: int | None = None
        self.classes_: np.ndarray | None = None
        self.sample_counts_: np.ndarray | None = None
        self._forest: RandomForestClassifier | None = None

    # ------------------------------------------------------------------ features
    @property
    def n_features(self) -> int:
        """Number of features ``F`` per pixel."""
        return 1 + len(_PER_SIGMA) * len(self.sigmas)

    @property
    def feature_names(self) -> list[str]:
        """Names of the ``F`` features, in the order of the last axis of :meth:`features`."""
        names = ["intensity"]
        for sigma in self.sigmas:
            names.extend(f"{name}(sigma={sigma:g})" for name in _PER_SIGMA)
        return names

    @property
    def halo(self) -> int:
        """Rows of context a pixel's features depend on, on each side."""
        return max(_radius(s) + _radius(_OUTER_RATIO * s) for s in self.sigmas)

    def features(self, image: np.ndarray) -> np.ndarray:
        """Compute the per-pixel feature stack (see the class docstring for the set).

        Parameters
        ----------
        image
            ``(Y, X)`` normalised image, cast to float32.

        Returns
        -------
        numpy.ndarray
            ``(Y, X, F)`` float32 with ``F = n_features``.
        """
        return _filter_bank(_as_image(image, "image"), self.sigmas)

    def _feature_chunks(self, image: np.ndarray, chunk_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(y0, y1, features)`` for row bands ``[y0, y1)`` of a validated image.

        Each band is filtered with ``halo`` extra rows on both sides, so the
        band's features equal the rows ``y0:y1`` of ``features(image)``.
        """
        height = image.shape[0]
        halo = self.halo
        for y0 in range(0, height, chunk_rows):
            y1 = min(height, y0 + chunk_rows)
            a, b = max(0, y0 - halo), min(height, y1 + halo)
            feats = _filter_bank(image[a:b], self.sigmas)
            yield y0, y1, feats[y0 - a : y1 - a]

    def _chunk_rows(self, image: np.ndarray, chunk_rows: int | None) -> int:
        if chunk_rows is None:
            return max(self.halo, _CHUNK_PIXELS // max(1, image.shape[1]))
        if int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows must be >= 1 or None, got {chunk_rows}")
        return int(chunk_rows)

    # ----------------------------------------------------------------- training
    def fit(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        *,
        num_classes: int,
        ignore_label: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> RandomForestSegmenter:
        """Train the forest on a class-balanced sample of labelled pixels.

        Up to ``samples_per_class`` pixels of each class are drawn uniformly
        (seeded by ``random_state``) from all slices together; features are
        computed slice by slice, in row bands, so memory stays bounded by one
        band plus the sample.

        Parameters
        ----------
        images
            Slices, each ``(Y, X)`` normalised float32 (shapes may differ
            between slices).
        labels
            Matching ``(Y, X)`` integer label images with values in
            ``[0, num_classes)`` or ``ignore_label``.
        num_classes
            Number of output classes; classes without labelled pixels get
            probability 0 at prediction.
        ignore_label
            Label value of unannotated pixels, never sampled.
        progress
            Called as ``progress(done, total)`` after each slice and once after
            the forest is grown (``total = len(images) + 1``).

        Returns
        -------
        RandomForestSegmenter
            ``self``.
        """
        images, labels = list(images), list(labels)
        if len(images) != len(labels):
            raise ValueError(f"got {len(images)} images but {len(labels)} label images; pass one label image per slice")
        if not images:
            raise ValueError("images is empty; pass at least one (Y, X) slice")
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        num_classes = int(num_classes)
        if ignore_label is not None:
            if isinstance(ignore_label, bool) or int(ignore_label) != ignore_label:
                raise ValueError(f"ignore_label must be an integer or None, got {ignore_label!r}")
            ignore_label = int(ignore_label)

        # Pass 1: validate and count labelled pixels per slice and class.
        counts = np.zeros((len(labels), num_classes), dtype=np.int64)
        for i, (image, label) in enumerate(zip(images, labels)):
            image_shape, label = np.shape(image), np.asarray(label)
            if len(image_shape) != 2:
                raise ValueError(f"images[{i}] must be a 2-D (Y, X) slice, got shape {image_shape}")
            if label.shape != image_shape:
                raise ValueError(f"labels[{i}] has shape {label.shape} but images[{i}] has shape {image_shape}")
            if not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
                raise ValueError(f"labels[{i}] must be an integer array, got dtype {label.dtype}")
            values = label.ravel().astype(np.int64)
            if ignore_label is not None:
                values = values[values != ignore_label]
            if values.size and (values.min() < 0 or values.max() >= num_classes):
                bad = values[(values < 0) | (values >= num_classes)][0]
                hint = "" if ignore_label is not None else " (pass ignore_label for unannotated pixels)"
                raise ValueError(
                    f"labels[{i}] contains the value {bad}; expected values in [0, {num_classes}){hint}"
                )
            counts[i] = np.bincount(values, minlength=num_classes)
        totals = counts.sum(axis=0)
        if totals.sum() == 0:
            raise ValueError("labels contain no labelled pixel (all are ignore_label)")

        # Draw global ranks per class, then split them into per-slice ranks.
        rng = np.random.default_rng(self.random_state)
        offsets = np.concatenate([np.zeros((1, num_classes), np.int64), np.cumsum(counts, axis=0)])
        ranks: list[list[np.ndarray]] = [[] for _ in images]
        for c in range(num_classes):
            n_take = min(self.samples_per_class, int(totals[c]))
            chosen = np.sort(rng.choice(int(totals[c]), size=n_take, replace=False)) if n_take else np.empty(0, int)
            bounds = np.searchsorted(chosen, offsets[:, c])
            for i in range(len(images)):
                ranks[i].append(chosen[bounds[i] : bounds[i + 1]] - offsets[i, c])
        sample_counts = np.array([sum(len(r[c]) for r in ranks) for c in range(num_classes)], dtype=np.int64)
        logger.info(
            "random forest: sampling %d pixels (%s per class) from %d slices",
            int(sample_counts.sum()),
            sample_counts.tolist(),
            len(images),
        )

        # Pass 2: features slice by slice, keeping only the sampled pixels.
        total_steps = len(images) + 1
        xs, ys = [], []
        start = time.perf_counter()
        for i, (image, label) in enumerate(zip(images, labels)):
            flat_label = np.asarray(label).ravel().astype(np.int64)
            positions = np.sort(
                np.concatenate(
                    [np.flatnonzero(flat_label == c)[ranks[i][c]] for c in range(num_classes) if len(ranks[i][c])]
                    or [np.empty(0, np.int64)]
                )
            )
            if positions.size:
                image = _as_image(image, f"images[{i}]")
                width = image.shape[1]
                rows = positions // width
                for y0, y1, feats in self._feature_chunks(image, self._chunk_rows(image, None)):
                    sel = positions[(rows >= y0) & (rows < y1)] - y0 * width
                    xs.append(feats.reshape(-1, feats.shape[-1])[sel])
                ys.append(flat_label[positions])
            if progress is not None:
                progress(i + 1, total_steps)
        x = np.concatenate(xs)
        y = np.concatenate(ys)
        logger.info("random forest: features of %d slices in %.1f s", len(images), time.perf_counter() - start)

        start = time.perf_counter()
        forest = RandomForestClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
        )
        forest.fit(x, y)
        logger.info(
            "random forest: %d trees on %d x %d samples in %.1f s",
            self.n_estimators,
            x.shape[0],
            x.shape[1],
            time.perf_counter() - start,
        )
        self._forest = forest
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.classes_ = np.asarray(forest.classes_, dtype=np.int64)
        self.sample_counts_ = sample_counts
        if progress is not None:
            progress(total_steps, total_steps)
        return self

    # --------------------------------------------------------------- prediction
    def predict_proba(self, image: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
        """Class probabilities of every pixel.

        Parameters
        ----------
        image
            ``(Y, X)`` normalised image, cast to float32.
        chunk_rows
            Rows per band whose features are computed and classified at once
            (with a halo, so the result does not depend on it); ``None`` picks
            bands of about one megapixel.

        Returns
        -------
        numpy.ndarray
            ``(num_classes, Y, X)`` float32 summing to 1 over classes; classes
            absent from training have probability 0.
        """
        if self._forest is None or self.num_classes is None or self.classes_ is None:
            raise RuntimeError("RandomForestSegmenter is not trained; call fit() or from_state_dict() first")
        image = _as_image(image, "image")
        height, width = image.shape
        out = np.zeros((self.num_classes, height, width), dtype=np.float32)
        for y0, y1, feats in self._feature_chunks(image, self._chunk_rows(image, chunk_rows)):
            proba = self._forest.predict_proba(feats.reshape(-1, feats.shape[-1]))
            out[self.classes_, y0:y1] = proba.T.reshape(len(self.classes_), y1 - y0, width)
        return out

    def predict(self, image: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
        """Most probable class per pixel: ``(Y, X)`` image -> ``(Y, X)`` int64 labels."""
        return np.argmax(self.predict_proba(image, chunk_rows=chunk_rows), axis=0)

    # -------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Everything needed to rebuild the trained model, as tensors and plain Python values.

        Returns
        -------
        dict
            Loadable with ``torch.load(..., weights_only=True)``. Each entry of
            ``"trees"`` holds the per-node arrays of one tree (``children_left``,
            ``children_right``, ``feature``, ``threshold``, ``impurity``,
            ``n_node_samples``, ``weighted_n_node_samples``,
            ``missing_go_to_left``: ``(node_count,)``; ``value``:
            ``(node_count, 1, K)``) plus ``max_depth`` and ``node_count``.
        """
        if self._forest is None or self.num_classes is None or self.classes_ is None:
            raise RuntimeError("RandomForestSegmenter is not trained; call fit() before state_dict()")
        trees = []
        for estimator in self._forest.estimators_:
            tree = estimator.tree_
            state = tree.__getstate__()
            nodes = state["nodes"]
            entry: dict = {key: _tensor(nodes[_NODE_FIELDS[key]]) for key in _TREE_ARRAYS if key != "value"}
            entry["value"] = _tensor(state["values"])
            if "missing_go_to_left" in nodes.dtype.names:
                entry["missing_go_to_left"] = _tensor(nodes["missing_go_to_left"])
            entry["max_depth"] = int(state["max_depth"])
            entry["node_count"] = int(state["node_count"])
            trees.append(entry)
        return {
            "format": _FORMAT,
            "format_version": FORMAT_VERSION,
            "feature_set": FEATURE_SET,
            "hyper_parameters": {
                "sigmas": list(self.sigmas),
                "n_estimators": self.n_estimators,
                "max_depth": self.max_depth,
                "samples_per_class": self.samples_per_class,
                "random_state": self.random_state,
                "n_jobs": self.n_jobs,
            },
            "num_classes": int(self.num_classes),
            "ignore_label": self.ignore_label,
            "classes": [int(c) for c in self.classes_],
            "n_features": int(self._forest.n_features_in_),
            "sample_counts": [int(c) for c in self.sample_counts_] if self.sample_counts_ is not None else None,
            "trees": trees,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> RandomForestSegmenter:
        """Rebuild a trained segmenter from :meth:`state_dict` output.

        The scikit-learn trees are reassembled node by node, so predictions
        are identical to the model that was saved.

        Raises
        ------
        ValueError
            If a key is missing, the format version or feature set differs, or
            the tree arrays are inconsistent; the message names the key.
        """
        if not isinstance(state, dict):
            raise ValueError(
                f"state must be the dict of RandomForestSegmenter.state_dict(), got {type(state).__name__}"
            )
        for key in _STATE_KEYS:
            if key not in state:
                raise ValueError(f"random-forest state is missing the key {key!r}")
        if state["format"] != _FORMAT:
            raise ValueError(f"random-forest state has 'format' {state['format']!r}; expected {_FORMAT!r}")
        if state["format_version"] != FORMAT_VERSION:
            raise ValueError(
                f"random-forest state has 'format_version' {state['format_version']!r}; "
                f"this version of emseg reads format_version {FORMAT_VERSION}"
            )
        if state["feature_set"] != FEATURE_SET:
            raise ValueError(
                f"random-forest state has 'feature_set' {state['feature_set']!r}; expected {FEATURE_SET!r}"
            )
        hyper = state["hyper_parameters"]
        for key in _HYPER_KEYS:
            if key not in hyper:
                raise ValueError(f"random-forest state is missing the key 'hyper_parameters.{key}'")
        model = cls(**{key: hyper[key] for key in _HYPER_KEYS})
        num_classes = int(state["num_classes"])
        classes = np.asarray(state["classes"], dtype=np.int64)
        n_features = int(state["n_features"])
        if n_features != model.n_features:
            raise ValueError(
                f"random-forest state has 'n_features' {n_features} but sigmas {model.sigmas} give {model.n_features}"
            )
        if classes.ndim != 1 or not classes.size or classes.min() < 0 or classes.max() >= num_classes:
            raise ValueError(
                f"random-forest state has 'classes' {classes.tolist()}; expected ids in [0, {num_classes})"
            )
        trees = state["trees"]
        if len(trees) != model.n_estimators:
            raise ValueError(
                f"random-forest state has {len(trees)} 'trees' but "
                f"'hyper_parameters.n_estimators' is {model.n_estimators}"
            )

        estimators = []
        for t, entry in enumerate(trees):
            estimators.append(_rebuild_tree(entry, t, n_features=n_features, classes=classes, model=model))
        forest = RandomForestClassifier(
            n_estimators=model.n_estimators,
            max_depth=model.max_depth,
            random_state=model.random_state,
            n_jobs=model.n_jobs,
        )
        forest.estimator_ = DecisionTreeClassifier()
        forest.estimators_ = estimators
        forest.classes_ = classes.copy()
        forest.n_classes_ = int(classes.size)
        forest.n_outputs_ = 1
        forest.n_features_in_ = n_features
        model._forest = forest
        model.num_classes = num_classes
        model.ignore_label = None if state["ignore_label"] is None else int(state["ignore_label"])
        model.classes_ = classes
        if state["sample_counts"] is not None:
            model.sample_counts_ = np.asarray(state["sample_counts"], dtype=np.int64)
        return model


def _rebuild_tree(
    entry: dict, index: int, *, n_features: int, classes: np.ndarray, model: RandomForestSegmenter
) -> DecisionTreeClassifier:
    """Reassemble one fitted ``DecisionTreeClassifier`` from its stored arrays."""
    where = f"trees[{index}]"
    for key in (*_TREE_ARRAYS, "max_depth", "node_count"):
        if key not in entry:
            raise ValueError(f"random-forest state is missing the key '{where}.{key}'")
    node_count = int(entry["node_count"])
    n_classes = int(classes.size)

    def array(key: str) -> np.ndarray:
        value = entry[key]
        arr = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if arr.shape[:1] != (node_count,):
            raise ValueError(f"'{where}.{key}' has shape {tuple(arr.shape)}; expected {node_count} nodes")
        return arr

    nodes = np.zeros(node_count, dtype=NODE_DTYPE)
    for key, field in _NODE_FIELDS.items():
        if field not in NODE_DTYPE.names:
            continue
        if key in entry:
            nodes[field] = array(key)
        elif key != "missing_go_to_left":
            raise ValueError(f"random-forest state is missing the key '{where}.{key}'")
    values = np.ascontiguousarray(array("value"), dtype=np.float64)
    if values.shape != (node_count, 1, n_classes):
        raise ValueError(f"'{where}.value' has shape {values.shape}; expected {(node_count, 1, n_classes)}")
    internal = nodes["left_child"] >= 0
    if internal.any() and (nodes["feature"][internal].min() < 0 or nodes["feature"][internal].max() >= n_features):
        raise ValueError(f"'{where}.feature' refers to features outside [0, {n_features})")

    tree = Tree(n_features, np.array([n_classes], dtype=np.intp), 1)
    tree.__setstate__(
        {"max_depth": int(entry["max_depth"]), "node_count": node_count, "nodes": nodes, "values": values}
    )
    estimator = DecisionTreeClassifier(max_depth=model.max_depth, max_features="sqrt")
    estimator.tree_ = tree
    # The forest encodes labels before growing its trees, so each tree's
    # classes are the indices 0..K-1 into the forest's classes_.
    estimator.classes_ = np.arange(n_classes, dtype=np.float64)
    estimator.n_classes_ = np.int64(n_classes)
    estimator.n_outputs_ = 1
    estimator.n_features_in_ = n_features
    estimator.max_features_ = max(1, int(math.sqrt(n_features)))
    return estimator

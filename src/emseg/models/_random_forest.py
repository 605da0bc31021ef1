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

Modules: ``_forest_features`` (the filter bank), ``_forest_state`` (the forest as tensors), this one
(the segmenter: fit, predict). Fitted forests are stored with :meth:`RandomForestSegmenter.state_dict` as
plain tensors (no pickled scikit-learn objects), so checkpoints load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from emseg.models._forest_features import _OUTER_RATIO, PER_SIGMA, _as_image, _filter_bank, _radius
from emseg.models._forest_state import FEATURE_SET, FORMAT_VERSION, forest_from_state, forest_state  # noqa: F401

__all__ = ["RandomForestSegmenter"]

logger = logging.getLogger(__name__)

_CHUNK_PIXELS = 2**20  # default core size of one prediction chunk


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
        return 1 + len(PER_SIGMA) * len(self.sigmas)

    @property
    def feature_names(self) -> list[str]:
        """Names of the ``F`` features, in the order of the last axis of :meth:`features`."""
        names = ["intensity"]
        for sigma in self.sigmas:
            names.extend(f"{name}(sigma={sigma:g})" for name in PER_SIGMA)
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
        return forest_state(self)

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
        return forest_from_state(cls, state)

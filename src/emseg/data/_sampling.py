"""Random training patches, oversampling labelled foreground classes: one sampler for 2-D slices and 3-D stacks."""

from __future__ import annotations

import itertools

import numpy as np

from emseg.data._load import IGNORE_INDEX

__all__ = ["PatchSampler", "WindowSampler"]


class WindowSampler:
    """Windows drawn from N-D label arrays by one of three modes; the mechanism of both patch samplers.

    :class:`PatchSampler` (2-D slices, ``(py, px)`` patches) and
    :class:`~emseg.data.VolumePatchSampler` (3-D sub-stacks, ``(pz, py, px)`` patches) are this class
    with their axes, padding and grid spacing; see :class:`PatchSampler` for the modes and parameters.
    ``images[i]`` is ``(C, *shape)``, ``labels[i]`` and ``weights[i]`` are ``shape``.
    """

    #: the spatial axes of a patch, and what one labelled array is called in messages
    axes: tuple[str, ...] = ("y", "x")
    unit = "label array"
    #: the jitter of a foreground-centred window along an axis of patch size ``p`` starts at ``-p // 4``
    #: (floor) in 2-D and at ``-(p // 4)`` in 3-D: both kept, so runs with patch sizes not divisible by 4
    #: draw the same batches as before the two samplers were merged.
    floor_jitter = False

    def __init__(
        self,
        images: list[np.ndarray],
        labels: list[np.ndarray],
        *,
        patch_size: tuple[int, ...],
        num_classes: int,
        background: int | None = 0,
        foreground_oversampling: float = 0.5,
        rng: np.random.Generator,
        weights: list[np.ndarray] | None = None,
        mode: str = "foreground",
        labelled_fraction: float = 0.8,
        spacing: tuple[int, int] | None = None,
    ) -> None:
        if len(patch_size) != len(self.axes):
            raise ValueError(f"patch_size must be ({', '.join(self.axes)}), got {tuple(patch_size)}")
        if mode not in ("foreground", "labelled", "grid"):
            raise ValueError(f"patch sampling mode must be 'foreground', 'labelled' or 'grid', got {mode!r}")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.rng = rng
        self.foreground_oversampling = foreground_oversampling
        self.mode = mode
        self.labelled_fraction = labelled_fraction
        self.images, self.labels = [], []
        self.weights: list[np.ndarray] | None = None if weights is None else []
        for k, (im, lab) in enumerate(zip(images, labels)):
            pads = [max(0, p - s) for p, s in zip(self.patch_size, lab.shape)]
            w = None
            if weights is not None:
                w = np.asarray(weights[k], np.float32)
                if w.shape != lab.shape:
                    raise ValueError(f"weight map {k} has shape {w.shape} but its {self.unit} has {lab.shape}")
            if any(pads):
                for axis, (pad, pad_mode) in enumerate(zip(pads, self._pad_modes(lab.shape, pads))):
                    if pad:
                        width = [(0, 0)] * im.ndim
                        width[axis + 1] = (0, pad)
                        im = np.pad(im, width, mode=pad_mode)
                lab = np.pad(lab, [(0, p) for p in pads], constant_values=IGNORE_INDEX)
                w = None if w is None else np.pad(w, [(0, p) for p in pads])
            self.images.append(im)
            self.labels.append(lab)
            if self.weights is not None:
                self.weights.append(w)
        self.spacing = self._grid_spacing(spacing)
        self.grid = self._grid_positions() if mode == "grid" else None
        self._queue: list[int] = []
        # Per foreground class: (array index, flat index) of every pixel or voxel.
        self.class_points: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for c in range(num_classes):
            if c == background:
                continue
            where = [(i, np.flatnonzero(lab == c)) for i, lab in enumerate(self.labels)]
            where = [(i, f) for i, f in where if f.size]
            if where:
                self.class_points[c] = (np.concatenate([np.full(f.size, i, np.int32) for i, f in where]),
                                        np.concatenate([f for _, f in where]))
        self.fg_points = None
        if self.class_points:  # all foreground points together, for the "labelled" mode
            self.fg_points = (np.concatenate([v for v, _ in self.class_points.values()]),
                              np.concatenate([f for _, f in self.class_points.values()]))
        sizes = np.array([lab.size for lab in self.labels], float)
        self.array_p = sizes / sizes.sum()

    def _pad_modes(self, shape: tuple[int, ...], pads: list[int]) -> list[str]:
        """Image padding per axis: reflect, or edge where the axis is one element long or the pad exceeds it."""
        return ["reflect" if s > 1 and pad < s else "edge" for s, pad in zip(shape, pads)]

    def _grid_spacing(self, spacing: tuple[int, ...] | None) -> tuple[int, ...]:
        """Step between grid windows per axis (default: the patch size)."""
        return tuple(int(s) for s in (spacing or self.patch_size))

    def _grid_positions(self) -> np.ndarray:
        """``(N, 1 + ndim)`` (array, corner...) of every grid window, in array / axis order."""
        out = []
        for i, lab in enumerate(self.labels):
            axes = [range(0, s - p + 1, sp) for s, p, sp in zip(lab.shape, self.patch_size, self.spacing)]
            out.extend((i, *corner) for corner in itertools.product(*axes))
        return np.asarray(out, np.int64).reshape(-1, 1 + len(self.patch_size))

    def _corner(self, shape: tuple[int, ...], center: tuple[int, ...] | None) -> tuple[int, ...]:
        if center is None:
            return tuple(int(self.rng.integers(0, s - p + 1)) for s, p in zip(shape, self.patch_size))
        corner = []
        for c, s, p in zip(center, shape, self.patch_size):
            low = -p // 4 if self.floor_jitter else -(p // 4)
            jitter = int(self.rng.integers(low, p // 4 + 1))
            corner.append(int(np.clip(c - p // 2 + jitter, 0, s - p)))
        return tuple(corner)

    def _window(self) -> tuple[int, ...]:
        """One window ``(array, corner...)`` drawn by the configured mode."""
        if self.mode == "grid":
            if not self._queue:
                self._queue = self.rng.permutation(len(self.grid)).tolist()
            return tuple(int(v) for v in self.grid[self._queue.pop()])
        if self.mode == "labelled":
            if self.fg_points is not None and self.rng.random() < self.labelled_fraction:
                arrays, flat = self.fg_points
                k = self.rng.integers(flat.size)
                i = int(arrays[k])
                shape = self.labels[i].shape
                point = np.unravel_index(int(flat[k]), shape)
                # uniform among the windows that contain the point
                corner = [int(self.rng.integers(max(0, c - p + 1), min(c, s - p) + 1))
                          for c, s, p in zip(point, shape, self.patch_size)]
                return (i, *corner)
            i = int(self.rng.choice(len(self.labels), p=self.array_p))
            return (i, *self._corner(self.labels[i].shape, None))
        center = None
        classes = list(self.class_points)
        if classes and self.rng.random() < self.foreground_oversampling:
            arrays, flat = self.class_points[classes[self.rng.integers(len(classes))]]
            k = self.rng.integers(flat.size)
            i = int(arrays[k])
            center = tuple(int(v) for v in np.unravel_index(int(flat[k]), self.labels[i].shape))
        else:
            i = int(self.rng.choice(len(self.labels), p=self.array_p))
        return (i, *self._corner(self.labels[i].shape, center))

    def state_dict(self) -> dict:
        """What a resumed run needs besides the random generator (saved by the trainer): the grid
        mode's windows still to visit in this pass."""
        return {"queue": [int(k) for k in self._queue]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self._queue = [int(k) for k in state.get("queue", [])]

    def windows(self, count: int) -> list[tuple[int, ...]]:
        """The next ``count`` windows ``(array, corner...)`` (advances the random state)."""
        return [self._window() for _ in range(count)]

    def sample(self, batch_size: int):
        """Return images ``(B, C, *patch_size)`` float32 and labels ``(B, *patch_size)`` int64,
        plus weights ``(B, *patch_size)`` float32 when the sampler was given weight maps."""
        xs, ys, ws = [], [], []
        for i, *corner in self.windows(batch_size):
            box = tuple(slice(c, c + p) for c, p in zip(corner, self.patch_size))
            xs.append(self.images[i][(slice(None), *box)])
            ys.append(self.labels[i][box])
            if self.weights is not None:
                ws.append(self.weights[i][box])
        out = np.stack(xs).astype(np.float32), np.stack(ys).astype(np.int64)
        return out if self.weights is None else (*out, np.stack(ws).astype(np.float32))


class PatchSampler(WindowSampler):
    """Draw ``(image, label)`` (or ``(image, label, weight)``) patches from 2-D slices.

    Three modes (``training.patch_sampling.mode``):

    * ``foreground`` (default): with probability ``foreground_oversampling`` a
      patch is centred (with jitter) on a random pixel of a foreground class
      chosen uniformly among the classes present, so rare classes (PSD, axon)
      are seen as often as common ones; otherwise the patch position is uniform.
    * ``labelled`` (Meyer et al.): with probability ``labelled_fraction`` the
      window is drawn uniformly among the windows containing a given labelled
      foreground pixel (chosen uniformly among all foreground pixels), so it
      always contains labelled foreground; otherwise the position is uniform.
    * ``grid`` (Guay et al.): windows whose corners lie on a regular grid with
      ``spacing`` ``(sy, sx)`` (default: the patch size), every slice, visited
      in a random order that is reshuffled after each full pass.

    Slices smaller than the patch are padded (reflect for images,
    :data:`IGNORE_INDEX` for labels, 0 for weights).

    Parameters
    ----------
    images
        Normalised slices, each ``(C, Y, X)`` float32.
    labels
        Label slices, each ``(Y, X)`` int16 with :data:`IGNORE_INDEX` for unlabelled pixels.
    patch_size
        ``(py, px)``.
    num_classes, background
        Class count; ``background`` (or ``None``) is never the oversampling target.
    weights
        Optional per-pixel loss weights, each shaped like its label slice;
        :meth:`sample` then returns the weight patches too.
    """

    axes = ("y", "x")
    unit = "label slice"
    floor_jitter = True

    def _pad_modes(self, shape: tuple[int, ...], pads: list[int]) -> list[str]:
        """Image padding: reflect on both axes, edge for a slice one pixel high or wide."""
        return ["reflect" if min(shape) > 1 else "edge"] * len(shape)

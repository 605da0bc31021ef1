"""Random training patches, oversampling labelled foreground classes."""

from __future__ import annotations

import numpy as np

from emseg.data._load import IGNORE_INDEX

__all__ = ["PatchSampler"]


class PatchSampler:
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

    def __init__(
        self,
        images: list[np.ndarray],
        labels: list[np.ndarray],
        *,
        patch_size: tuple[int, int],
        num_classes: int,
        background: int | None = 0,
        foreground_oversampling: float = 0.5,
        rng: np.random.Generator,
        weights: list[np.ndarray] | None = None,
        mode: str = "foreground",
        labelled_fraction: float = 0.8,
        spacing: tuple[int, int] | None = None,
    ) -> None:
        if mode not in ("foreground", "labelled", "grid"):
            raise ValueError(f"patch sampling mode must be 'foreground', 'labelled' or 'grid', got {mode!r}")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.rng = rng
        self.foreground_oversampling = foreground_oversampling
        self.mode = mode
        self.labelled_fraction = labelled_fraction
        py, px = self.patch_size
        self.images, self.labels = [], []
        self.weights: list[np.ndarray] | None = None if weights is None else []
        for k, (im, lab) in enumerate(zip(images, labels)):
            pad_y, pad_x = max(0, py - lab.shape[0]), max(0, px - lab.shape[1])
            if pad_y or pad_x:
                im = np.pad(im, ((0, 0), (0, pad_y), (0, pad_x)), mode="reflect" if min(lab.shape) > 1 else "edge")
                lab = np.pad(lab, ((0, pad_y), (0, pad_x)), constant_values=IGNORE_INDEX)
            self.images.append(im)
            self.labels.append(lab)
            if self.weights is not None:
                w = np.asarray(weights[k], np.float32)
                if w.shape != labels[k].shape:
                    raise ValueError(f"weight map {k} has shape {w.shape} but its label slice has {labels[k].shape}")
                self.weights.append(np.pad(w, ((0, pad_y), (0, pad_x))) if pad_y or pad_x else w)
        self.spacing = tuple(int(s) for s in (spacing or self.patch_size))
        self.grid = self._grid_positions() if mode == "grid" else None
        self._queue: list[int] = []
        # Per foreground class: (slice index, flat pixel index) of every pixel.
        self.class_pixels: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for c in range(num_classes):
            if c == background:
                continue
            where = [(i, np.flatnonzero(lab == c)) for i, lab in enumerate(self.labels)]
            where = [(i, f) for i, f in where if f.size]
            if where:
                slices = np.concatenate([np.full(f.size, i, np.int32) for i, f in where])
                flat = np.concatenate([f for _, f in where])
                self.class_pixels[c] = (slices, flat)
        areas = np.array([lab.size for lab in self.labels], float)
        self.slice_p = areas / areas.sum()
        if self.class_pixels:  # all foreground pixels together, for the "labelled" mode
            self.fg_pixels = (np.concatenate([s for s, _ in self.class_pixels.values()]),
                              np.concatenate([f for _, f in self.class_pixels.values()]))
        else:
            self.fg_pixels = None

    def _grid_positions(self) -> np.ndarray:
        """``(N, 3)`` (slice, y0, x0) of every grid window, in slice / row / column order."""
        py, px = self.patch_size
        sy, sx = self.spacing
        out = []
        for i, lab in enumerate(self.labels):
            for y0 in range(0, lab.shape[0] - py + 1, sy):
                for x0 in range(0, lab.shape[1] - px + 1, sx):
                    out.append((i, y0, x0))
        return np.asarray(out, np.int64).reshape(-1, 3)

    def _window(self) -> tuple[int, int, int]:
        """One window ``(slice, y0, x0)`` drawn by the configured mode."""
        py, px = self.patch_size
        if self.mode == "grid":
            if not self._queue:
                self._queue = self.rng.permutation(len(self.grid)).tolist()
            i, y0, x0 = self.grid[self._queue.pop()]
            return int(i), int(y0), int(x0)
        if self.mode == "labelled":
            if self.fg_pixels is not None and self.rng.random() < self.labelled_fraction:
                slices, flat = self.fg_pixels
                k = self.rng.integers(flat.size)
                i = int(slices[k])
                h, w = self.labels[i].shape
                cy, cx = divmod(int(flat[k]), w)
                # uniform among the windows that contain (cy, cx)
                y0 = int(self.rng.integers(max(0, cy - py + 1), min(cy, h - py) + 1))
                x0 = int(self.rng.integers(max(0, cx - px + 1), min(cx, w - px) + 1))
                return i, y0, x0
            i = int(self.rng.choice(len(self.labels), p=self.slice_p))
            return (i, *self._corner(self.labels[i].shape, None))
        center = None
        classes = list(self.class_pixels)
        if classes and self.rng.random() < self.foreground_oversampling:
            slices, flat = self.class_pixels[classes[self.rng.integers(len(classes))]]
            k = self.rng.integers(flat.size)
            i = int(slices[k])
            center = divmod(int(flat[k]), self.labels[i].shape[1])
        else:
            i = int(self.rng.choice(len(self.labels), p=self.slice_p))
        return (i, *self._corner(self.labels[i].shape, center))

    def _corner(self, shape: tuple[int, int], center: tuple[int, int] | None) -> tuple[int, int]:
        py, px = self.patch_size
        if center is None:
            return int(self.rng.integers(0, shape[0] - py + 1)), int(self.rng.integers(0, shape[1] - px + 1))
        jy, jx = self.rng.integers(-py // 4, py // 4 + 1), self.rng.integers(-px // 4, px // 4 + 1)
        y0 = int(np.clip(center[0] - py // 2 + jy, 0, shape[0] - py))
        x0 = int(np.clip(center[1] - px // 2 + jx, 0, shape[1] - px))
        return y0, x0

    def state_dict(self) -> dict:
        """What a resumed run needs besides the random generator (saved by the trainer): the grid
        mode's windows still to visit in this pass."""
        return {"queue": [int(k) for k in self._queue]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self._queue = [int(k) for k in state.get("queue", [])]

    def windows(self, count: int) -> list[tuple[int, int, int]]:
        """The next ``count`` windows ``(slice, y0, x0)`` (advances the random state)."""
        return [self._window() for _ in range(count)]

    def sample(self, batch_size: int):
        """Return images ``(B, C, py, px)`` float32 and labels ``(B, py, px)`` int64,
        plus weights ``(B, py, px)`` float32 when the sampler was given weight maps."""
        py, px = self.patch_size
        xs, ys, ws = [], [], []
        for i, y0, x0 in self.windows(batch_size):
            xs.append(self.images[i][:, y0 : y0 + py, x0 : x0 + px])
            ys.append(self.labels[i][y0 : y0 + py, x0 : x0 + px])
            if self.weights is not None:
                ws.append(self.weights[i][y0 : y0 + py, x0 : x0 + px])
        out = np.stack(xs).astype(np.float32), np.stack(ys).astype(np.int64)
        return out if self.weights is None else (*out, np.stack(ws).astype(np.float32))

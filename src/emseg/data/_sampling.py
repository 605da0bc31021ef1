"""Random training patches, oversampling labelled foreground classes."""

from __future__ import annotations

import numpy as np

from emseg.data._load import IGNORE_INDEX

__all__ = ["PatchSampler"]


class PatchSampler:
    """Draw ``(image, label)`` patches from 2-D slices.

    With probability ``foreground_oversampling`` a patch is centred (with
    jitter) on a random pixel of a foreground class chosen uniformly among the
    classes present, so rare classes (PSD, axon) are seen as often as common
    ones; otherwise the patch position is uniform.  Slices smaller than the
    patch are padded (reflect for images, :data:`IGNORE_INDEX` for labels).

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
    ) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        self.rng = rng
        self.foreground_oversampling = foreground_oversampling
        py, px = self.patch_size
        self.images, self.labels = [], []
        for im, lab in zip(images, labels):
            pad_y, pad_x = max(0, py - lab.shape[0]), max(0, px - lab.shape[1])
            if pad_y or pad_x:
                im = np.pad(im, ((0, 0), (0, pad_y), (0, pad_x)), mode="reflect" if min(lab.shape) > 1 else "edge")
                lab = np.pad(lab, ((0, pad_y), (0, pad_x)), constant_values=IGNORE_INDEX)
            self.images.append(im)
            self.labels.append(lab)
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

    def _corner(self, shape: tuple[int, int], center: tuple[int, int] | None) -> tuple[int, int]:
        py, px = self.patch_size
        if center is None:
            return int(self.rng.integers(0, shape[0] - py + 1)), int(self.rng.integers(0, shape[1] - px + 1))
        jy, jx = self.rng.integers(-py // 4, py // 4 + 1), self.rng.integers(-px // 4, px // 4 + 1)
        y0 = int(np.clip(center[0] - py // 2 + jy, 0, shape[0] - py))
        x0 = int(np.clip(center[1] - px // 2 + jx, 0, shape[1] - px))
        return y0, x0

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Return images ``(B, C, py, px)`` float32 and labels ``(B, py, px)`` int64."""
        py, px = self.patch_size
        xs, ys = [], []
        classes = list(self.class_pixels)
        for _ in range(batch_size):
            center = None
            if classes and self.rng.random() < self.foreground_oversampling:
                slices, flat = self.class_pixels[classes[self.rng.integers(len(classes))]]
                k = self.rng.integers(flat.size)
                i = int(slices[k])
                center = divmod(int(flat[k]), self.labels[i].shape[1])
            else:
                i = int(self.rng.choice(len(self.labels), p=self.slice_p))
            y0, x0 = self._corner(self.labels[i].shape, center)
            xs.append(self.images[i][:, y0 : y0 + py, x0 : x0 + px])
            ys.append(self.labels[i][y0 : y0 + py, x0 : x0 + px])
        return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.int64)

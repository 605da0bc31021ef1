"""Whole-volume and untiled prediction paths of a :class:`~emseg.inference.Predictor`.

A mixin of :class:`~emseg.inference.Predictor` (which supplies the network, the normaliser, ``_slice``,
``_input``, ``_flip_mean`` and ``_offset``): a stack slice by slice, 3-D networks through MONAI's
sliding window, and the slices that are not tiled (random forest, valid-padding networks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from emseg._device import autocast
from emseg.data import context_stack as _context_stack
from emseg.inference._protocol import volume_labels

__all__ = ["VolumePaths"]


class VolumePaths:
    """Stacks and volumes (:meth:`predict_volume`, :meth:`predict_proba_volume`) and the untiled slice paths."""

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
        step = self.slices_per_forward((y, x))  # > 1: several whole-slice windows per forward, groups fixed on z
        if step == 1:  # tiled 2-D network: labels from the blended logits, no softmax
            for k in range(z):
                labels[k] = self.predict_labels_slice(self._slice_input(volume, k))
                if progress is not None:
                    progress(1)
            return labels, None
        from emseg.inference._tiling import launch_ahead

        def launch(group: range) -> Any:
            return self._labels_group([self._slice_input(volume, j) for j in group], deferred=True)

        groups = [range(k, min(k + step, z)) for k in range(0, z, step)]
        for group, group_labels in launch_ahead(groups, launch):
            labels[group.start:group.stop] = group_labels
            if progress is not None:
                progress(len(group))
        return labels, None

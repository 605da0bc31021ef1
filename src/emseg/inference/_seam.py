"""The window geometry and blockwise seam of a tiled :class:`~emseg.inference.Predictor`.

What the blockwise engine (:mod:`emseg.inference._blockwise`) asks of a predictor, and the window
checks it rests on: the window that fits the network (:meth:`TiledSeam.check_window_fits`), the overlap
from the receptive field, the halo and input box of a block, and a block's probabilities or labels,
identical to the same voxels predicted in memory.  A mixin of :class:`~emseg.inference.Predictor`, which
supplies ``model``, ``window``, ``divisor``, ``normalizer``, ``_slice`` and ``_tiled``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from emseg.inference._network import probe_receptive_radius

__all__ = ["TiledSeam"]


class TiledSeam:
    """Window geometry and the blockwise interface (``halo``, ``block_input``, ``predict_*_block``)."""

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


    def _roi(self, shape: tuple[int, int]) -> tuple[int, int]:
        d = self.divisor
        return tuple(min(w, math.ceil(s / d) * d) for w, s in zip(self.window, shape))


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
            self._receptive_radius = probe_receptive_radius(
                self.model, self.context_slices + len(self.grain_filter), self.window,
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
        z0, z1 = self._slice_groups(zs, shape)
        z = slice(max(0, z0 - half), min(shape[0], z1 + half))
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

    def _slice_groups(self, zs: slice, shape: tuple[int, int, int]) -> tuple[int, int]:
        """``[z0, z1)``: the slices of the whole forward-pass groups (:meth:`slices_per_forward`) holding ``zs``.

        Groups are consecutive runs of that many slices from z = 0, the same in memory and blockwise, so a
        block computes each slice in exactly the tensor the whole volume does (a block cutting a group
        computes the whole group and keeps its own slices).
        """
        step = self.slices_per_forward(tuple(shape[1:]))
        if step == 1:
            return zs.start, zs.stop
        return zs.start // step * step, min(int(shape[0]), -(-zs.stop // step) * step)

    def _block(self, data, origin, region, shape, output: str) -> np.ndarray:
        zs, ys, xs = region
        oz, oy, ox = origin
        half = self.context_slices // 2
        size = (zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start)
        if output == "labels":
            out = np.empty(size, np.uint8 if self.num_classes <= 256 else np.uint16)
        else:
            out = np.empty((self.num_classes, *size), np.float32)
        step = self.slices_per_forward(tuple(shape[1:])) if output == "labels" else 1
        if step > 1:  # several whole-slice windows per forward pass, in the groups predict_volume runs
            from emseg.inference._tiling import launch_ahead

            def launch(group: range) -> Any:
                slices = [data[np.clip(np.arange(z - half, z + half + 1), 0, shape[0] - 1) - oz] for z in group]
                return self._labels_group(slices, origin=(oy, ox), full_shape=tuple(shape[1:]), region=(ys, xs),
                                          deferred=True)

            z0, z1 = self._slice_groups(zs, shape)
            groups = [range(g, min(g + step, z1)) for g in range(z0, z1, step)]
            for group, labels in launch_ahead(groups, launch):
                keep = [j for j, z in enumerate(group) if zs.start <= z < zs.stop]
                out[[group[j] - zs.start for j in keep]] = labels[keep]
            return out
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

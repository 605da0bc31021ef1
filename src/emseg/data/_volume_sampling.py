"""Training data for 3-D models: labelled ``(Z, Y, X)`` sub-stacks, 3-D patches, 3-D augmentation.

The 2-D path (:class:`~emseg.data.LabelledSlices`, :class:`~emseg.data.PatchSampler`,
:func:`~emseg.data.augment_batch`) works on independent slices; a 3-D model
(``spatial_dims == 3`` in the registry) needs contiguous sections, so each
``data.train`` / ``data.val`` entry becomes one sub-stack here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from emseg.config import AugmentConfig, Config, VolumeSource
from emseg.data._load import IGNORE_INDEX, DataError, LabelledArrays, _load_source
from emseg.data._sampling import WindowSampler
from emseg.data._slices import parse_slices
from emseg.io import open_image

logger = logging.getLogger(__name__)

__all__ = ["LabelledVolumes", "VolumePatchSampler", "augment_volume_batch", "load_training_volumes"]


@dataclass
class LabelledVolumes(LabelledArrays):
    """Labelled ``(Z, Y, X)`` sub-stacks, possibly of different sizes.

    ``images[i]`` is ``(Z, Y, X)`` (raw dtype); ``labels[i]`` is ``(Z, Y, X)``
    int16 with class indices and :data:`~emseg.data.IGNORE_INDEX` for
    unlabelled voxels; ``names[i]`` says where it came from.
    """

    @property
    def num_slices(self) -> int:
        return sum(im.shape[0] for im in self.images)


def _contiguous_range(source: VolumeSource, key: str) -> tuple[int, int]:
    try:
        with open_image(source.image) as raw:
            depth = raw.array.shape[0]
    except (OSError, ValueError) as err:
        raise DataError(f"{key}: {err}") from None
    try:
        zs = parse_slices(source.slices, depth)
    except ValueError as err:
        raise DataError(f"{key}.slices: {err} ({source.image})") from None
    if zs != list(range(zs[0], zs[-1] + 1)):
        raise DataError(
            f"{key}.slices: {source.slices!r} selects non-contiguous slices {zs[:8]}{'...' if len(zs) > 8 else ''}; "
            f"a 3-D model trains on sub-stacks of neighbouring sections: give one range such as "
            f"'{zs[0]}:{zs[-1] + 1}' per entry (use a list of entries for several ranges)"
        )
    return zs[0], zs[-1] + 1


def _load_volumes(sources: list[VolumeSource], key: str, config: Config) -> LabelledVolumes:
    out = LabelledVolumes()
    for i, source in enumerate(sources):
        name = f"{key}[{i}]" if len(sources) > 1 else key
        z0, z1 = _contiguous_range(source, name)
        part = _load_source(source, name, num_classes=len(config.data.classes), ignore_label=config.data.ignore_label,
                            classes=config.data.classes, context=1)  # same label checks as the 2-D path
        out.images.append(np.stack(part.images))
        out.labels.append(np.stack(part.labels))
        out.names.append(f"{source.image} z={z0}:{z1}")
    return out


def load_training_volumes(config: Config) -> tuple[LabelledVolumes, LabelledVolumes]:
    """Read and check the training and validation sub-stacks of ``config`` for a 3-D model.

    Every ``data.train`` / ``data.val`` entry must select contiguous slices
    (one range). Without ``data.val``, the last ``data.val_fraction`` of the
    slices of the last training entry (at least one, leaving one) are held out
    for validation: a contiguous block, not random slices, so no validation
    section sits between training sections.

    Raises:
        DataError: non-contiguous slices, unreadable files, shape mismatches,
            label values outside the class list; each message names the key.
    """
    train = _load_volumes(config.data.train, "data.train", config)
    if config.data.val is not None:
        val = _load_volumes(config.data.val, "data.val", config)
    elif config.data.val_fraction > 0 and train.images[-1].shape[0] >= 2:
        image, labels, name = train.images[-1], train.labels[-1], train.names[-1]
        depth = image.shape[0]
        n_val = min(max(1, round(config.data.val_fraction * depth)), depth - 1)
        train.images[-1], train.labels[-1] = image[: depth - n_val], labels[: depth - n_val]
        train.names[-1] = f"{name} (first {depth - n_val} slices)"
        val = LabelledVolumes([image[depth - n_val :]], [labels[depth - n_val :]], [f"{name} (last {n_val} slices)"])
    else:
        val = LabelledVolumes()
    if not any((lab != IGNORE_INDEX).any() for lab in train.labels):
        raise DataError("data.train: every training voxel is unlabelled (ignore_label); nothing to learn from")
    logger.info("training on %d sub-stacks (%d slices), validating on %d (%d slices)", len(train), train.num_slices,
                len(val), val.num_slices)
    return train, val


class VolumePatchSampler(WindowSampler):
    """Draw ``(image, label[, weight])`` 3-D patches from sub-stacks.

    The three modes of :class:`~emseg.data.PatchSampler` (``training.patch_sampling``), in 3-D:

    * ``foreground`` (default): with probability ``foreground_oversampling`` a
      patch is centred (with jitter) on a random voxel of a foreground class
      chosen uniformly among those present; otherwise its position is uniform;
    * ``labelled`` (Meyer et al.): with probability ``labelled_fraction`` the
      window is uniform among the windows containing a labelled foreground voxel
      (chosen uniformly among all of them); otherwise uniform;
    * ``grid`` (Guay et al.): corners on a regular grid, ``spacing`` ``(sy, sx)``
      in-plane (default: the patch size) and the patch depth along z, visited in
      a random order reshuffled after each full pass.

    Stacks smaller than the patch are padded (reflect, or edge for a single
    slice, for images; :data:`~emseg.data.IGNORE_INDEX` for labels; 0 for weights).

    Parameters
    ----------
    images
        Normalised sub-stacks, each ``(C, Z, Y, X)`` float32.
    labels
        Label sub-stacks, each ``(Z, Y, X)`` int16.
    patch_size
        ``(pz, py, px)``.
    num_classes, background, foreground_oversampling, rng
        As :class:`~emseg.data.PatchSampler`.
    weights
        Optional voxel loss weights, each shaped like its label sub-stack
        (``training.weight_map``); :meth:`sample` then returns weight patches too.
    mode, labelled_fraction, spacing
        ``training.patch_sampling``.
    """

    axes = ("z", "y", "x")
    unit = "label sub-stack"

    def _grid_spacing(self, spacing: tuple[int, int] | None) -> tuple[int, int, int]:
        """``spacing`` is in-plane ``(sy, sx)``; along z the grid steps by the patch depth."""
        sy, sx = (int(v) for v in (spacing or self.patch_size[1:]))
        return (self.patch_size[0], sy, sx)


def augment_volume_batch(
    images: np.ndarray, labels: np.ndarray, config: AugmentConfig, rng: np.random.Generator, *,
    weights: np.ndarray | None = None, epoch_field: np.ndarray | None = None,
):
    """Randomly flip in z, then apply the 2-D augmentations of :func:`~emseg.data.augment_batch` in-plane.

    Only in-plane rotations and transposes: anisotropic stacks have a coarser
    z axis, so z is never swapped with y or x (it is only flipped). Free
    rotation, zoom, grid distortion and elastic deformation (when switched on)
    move every section of a patch the same way; intensity jitter and noise as in 2-D.

    Args:
        images: ``(B, C, Z, Y, X)`` float32 normalised patches.
        labels: ``(B, Z, Y, X)`` int labels (they follow every geometric transform).
        config: which transforms are on (``flips`` covers z, y and x), intensity ranges.
        rng: the random generator (seeded by the trainer).
        weights: optional voxel loss weights shaped like ``labels``; they follow the labels.
        epoch_field: Guay elastic field of this epoch, ``(2, Y, X)`` (:func:`~emseg.data.epoch_elastic_field`).

    Returns:
        New ``(images, labels)`` of the same shapes, or ``(images, labels, weights)``
        when ``weights`` is given.
    """
    from emseg.data._augment import augment_batch

    if config.flips:
        images, labels = images.copy(), labels.copy()
        weights = None if weights is None else weights.copy()
        for b in range(len(images)):
            if rng.random() < 0.5:
                images[b], labels[b] = np.flip(images[b], 1).copy(), np.flip(labels[b], 0).copy()
                if weights is not None:
                    weights[b] = np.flip(weights[b], 0).copy()
    return augment_batch(images, labels, config, rng, weights=weights, epoch_field=epoch_field)

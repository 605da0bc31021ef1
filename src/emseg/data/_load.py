"""Load the labelled slices a configuration names, with every check up front."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from emseg.config import Config, VolumeSource
from emseg.constants import IGNORE_INDEX
from emseg.data._slices import parse_slices
from emseg.io import open_image

logger = logging.getLogger(__name__)

__all__ = ["IGNORE_INDEX", "LabelledSlices", "DataError", "load_training_data", "class_frequencies"]

#: Label value used internally (and by torch's cross-entropy) for pixels that
#: carry no label: the user's ``ignore_label`` and padding.


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and the fix."""


@dataclass
class LabelledArrays:
    """Labelled images with their labels and where each came from (the shared part of
    :class:`LabelledSlices` and :class:`~emseg.data.LabelledVolumes`)."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, indices: list[int]):
        """The entries at ``indices``, as the same type."""
        return type(self)(
            [self.images[i] for i in indices], [self.labels[i] for i in indices], [self.names[i] for i in indices]
        )


@dataclass
class LabelledSlices(LabelledArrays):
    """2-D labelled slices, possibly of different sizes.

    ``images[i]`` is ``(Y, X)`` (raw dtype) or ``(C, Y, X)`` with ``C``
    context slices; ``labels[i]`` is ``(Y, X)`` int16 with class indices and
    :data:`IGNORE_INDEX` for unlabelled pixels.
    """


def context_stack(volume, z: int, context: int) -> np.ndarray:
    """``context`` slices centred on ``z`` (edge slices repeated), as ``(C, Y, X)``."""
    half = context // 2
    zs = np.clip(np.arange(z - half, z + half + 1), 0, volume.shape[0] - 1)
    return np.stack([np.asarray(volume[int(k)]) for k in zs])


def _load_source(source: VolumeSource, key: str, *, num_classes: int, ignore_label: int | None,
                 classes: list[str], context: int) -> LabelledSlices:
    try:
        raw = open_image(source.image)
        lab = open_image(source.labels)
    except (OSError, ValueError) as err:
        raise DataError(f"{key}: {err}") from None
    with raw, lab:
        if tuple(raw.array.shape) != tuple(lab.array.shape):
            raise DataError(
                f"{key}: image {source.image} has shape {tuple(raw.array.shape)} but labels "
                f"{source.labels} have shape {tuple(lab.array.shape)}; they must match (z, y, x)"
            )
        if not np.issubdtype(lab.array.dtype, np.integer):
            raise DataError(f"{key}: labels {source.labels} have dtype {lab.array.dtype}; expected integer class labels")
        try:
            zs = parse_slices(source.slices, raw.array.shape[0])
        except ValueError as err:
            raise DataError(f"{key}.slices: {err} ({source.image})") from None
        out = LabelledSlices()
        floating = np.issubdtype(raw.array.dtype, np.floating) or np.issubdtype(raw.array.dtype, np.complexfloating)
        non_finite: dict[int, int] = {}  # z -> NaN / infinite pixels
        for z in zs:
            image = np.asarray(raw.array[z]) if context == 1 else context_stack(raw.array, z, context)
            if floating:
                bad_pixels = int(np.count_nonzero(~np.isfinite(image)))  # with context slices: of the whole stack
                if bad_pixels:
                    non_finite[z] = bad_pixels
            labels = np.asarray(lab.array[z]).astype(np.int64)
            valid = labels != ignore_label if ignore_label is not None else np.ones(labels.shape, bool)
            bad = np.unique(labels[valid & ((labels < 0) | (labels >= num_classes))])
            if bad.size:
                hint = "" if ignore_label is not None else " or set data.ignore_label for unlabelled pixels"
                raise DataError(
                    f"{key}: labels {source.labels} (z={z}) contain values {bad[:10].tolist()} outside the "
                    f"class list 0..{num_classes - 1} ({', '.join(classes)}); add classes to data.classes{hint}"
                )
            labels = np.where(valid, labels, IGNORE_INDEX).astype(np.int16)
            out.images.append(image)
            out.labels.append(labels)
            out.names.append(f"{source.image} z={z}")
    if non_finite:
        _raise_non_finite(key, source.image, non_finite)
    return out


def _raise_non_finite(key: str, image: str, non_finite: dict[int, int]) -> None:
    """NaN or infinite pixels would turn the normalisation and every loss into NaN: name them and stop."""
    zs = sorted(non_finite)
    where = ", ".join(f"z={z}: {non_finite[z]}" for z in zs[:5]) + (", ..." if len(zs) > 5 else "")
    raise DataError(
        f"{key}: image {image} contains {sum(non_finite.values())} NaN or infinite pixels in {len(zs)} "
        f"slice(s) ({where}); replace them with finite values (e.g. the image mean) or leave those slices out "
        f"with {key}.slices"
    )


def _load_sources(sources: list[VolumeSource], key: str, config: Config) -> LabelledSlices:
    out = LabelledSlices()
    for i, source in enumerate(sources):
        part = _load_source(
            source,
            f"{key}[{i}]" if len(sources) > 1 else key,
            num_classes=len(config.data.classes),
            ignore_label=config.data.ignore_label,
            classes=config.data.classes,
            context=config.model.context_slices,
        )
        out.images += part.images
        out.labels += part.labels
        out.names += part.names
    return out


def load_training_data(config: Config) -> tuple[LabelledSlices, LabelledSlices]:
    """Read and check the training and validation slices of ``config``.

    Validation uses ``data.val`` when given, otherwise a seeded random
    ``data.val_fraction`` of the training slices (at least one when there are
    two or more slices and the fraction is positive).

    Raises:
        DataError: unreadable files, shape mismatches, label values outside the
            class list; each message names the config key and file.
    """
    train = _load_sources(config.data.train, "data.train", config)
    if config.data.val is not None:
        val = _load_sources(config.data.val, "data.val", config)
    elif config.data.val_fraction > 0 and len(train) >= 2:
        rng = np.random.default_rng(config.training.seed)
        n_val = max(1, round(config.data.val_fraction * len(train)))
        n_val = min(n_val, len(train) - 1)
        order = rng.permutation(len(train))
        val_idx, train_idx = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
        train, val = train.take(train_idx), train.take(val_idx)
    else:
        val = LabelledSlices()
    if not any((lab != IGNORE_INDEX).any() for lab in train.labels):
        raise DataError("data.train: every training pixel is unlabelled (ignore_label); nothing to learn from")
    logger.info("training on %d slices, validating on %d", len(train), len(val))
    return train, val


def class_frequencies(labels: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Fraction of labelled pixels per class, ``(num_classes,)`` float64."""
    counts = np.zeros(num_classes, np.int64)
    for lab in labels:
        valid = lab[lab != IGNORE_INDEX]
        counts += np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
    total = counts.sum()
    return counts / total if total else counts.astype(float)

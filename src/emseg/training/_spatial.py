"""What the trainer does differently for 3-D, multi-head and valid-padding networks.

Small functions the trainer calls so its loop stays the same for every model:

* 3-D models (``spatial_dims == 3`` in the registry) train on ``(Z, Y, X)``
  sub-stacks with ``(z, y, x)`` patches and are validated by 3-D sliding-window
  prediction of the validation sub-stacks;
* networks with auxiliary outputs (``model.aux_loss_weights``, e.g.
  ``hybrid2d3d``'s 2-D head) get their loss wrapped in
  :class:`~emseg.training.MultiHeadLoss`;
* valid-padding networks (``unet-original``) return logits smaller than the
  patch; the labels are cropped to them (:func:`match_target`), and patch and
  prediction windows are rounded up to valid input sizes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from emseg.config import Config
from emseg.data import (
    IGNORE_INDEX,
    DataError,
    LabelledVolumes,
    Normalizer,
    VolumePatchSampler,
    class_frequencies,
    load_training_data,
    load_training_volumes,
)
from emseg.evaluation import EvaluationResult, confusion_matrix
from emseg.losses import MultiHeadLoss
from emseg.models import MODELS, build_model, model_divisor

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_SLICE_SIZE",
    "evaluate_volumes",
    "fit_patch_to_data",
    "inference_metadata",
    "load_data",
    "match_target",
    "resolve_patch_size",
    "volume_sampler",
    "warn_absent_classes",
    "with_aux_heads",
]

#: Output size of the default prediction window of a valid-padding network (Ronneberger's 388).
VALID_OUTPUT_WINDOW = 388
#: Smallest in-plane (y, x) size of a 3-D model's prediction window.
MIN_PREDICT_WINDOW_YX = 256


def load_data(config: Config):
    """Training and validation data in the form the model needs.

    Returns ``(train, val)`` as :class:`~emseg.data.LabelledVolumes` for a 3-D
    model, :class:`~emseg.data.LabelledSlices` otherwise.
    """
    if MODELS.get(config.model.name).spatial_dims == 3:
        return load_training_volumes(config)
    return load_training_data(config)


def _meta_model(config: Config) -> Any:
    """The configured network built on the meta device (no memory, no compute): for its sizes."""
    with torch.device("meta"):
        return build_model(config.model.name, in_channels=config.model.context_slices,
                           num_classes=len(config.data.classes), options=config.model.options)


def resolve_patch_size(config: Config, *, log: bool = True) -> tuple[int, ...]:
    """The training patch: ``(y, x)`` for 2-D models, ``(z, y, x)`` for 3-D models.

    3-D models: ``training.patch_size`` with 3 values is used as is; when it is
    not set, the model's window (``default_patch`` in the registry); with 2
    values, ``(default z, y, x)``.  Valid-padding models: ``(y, x)`` rounded up
    to the next valid input size.
    """
    spec = MODELS.get(config.model.name)
    patch = tuple(int(p) for p in config.training.patch_size)
    if spec.spatial_dims == 3:
        default = spec.default_patch or (5, 256, 256)
        if len(patch) == 3:
            return patch
        if "patch_size" not in config.training.model_fields_set:
            return tuple(default)
        return (default[0], *patch)
    if spec.valid_padding:
        model = _meta_model(config)
        valid = tuple(model.valid_input_size(p) for p in patch)
        if valid != patch and log:
            logger.info("patch_size %s rounded up to %s, valid input sizes of %s (output %s)", list(patch),
                        list(valid), config.model.name, [model.output_size(v) for v in valid])
        return valid
    return patch


def inference_metadata(config: Config) -> dict[str, Any]:
    """What the checkpoint's ``inference`` dict needs beyond the 2-D defaults.

    ``spatial_dims``; for 3-D models ``window_3d``: the training patch's z
    (clipped to the volume when predicting) and at least
    :data:`MIN_PREDICT_WINDOW_YX` in y and x (the networks are fully
    convolutional; larger in-plane windows mean fewer overlapping windows to
    compute, which matters on CPUs, where 3-D convolutions are slow); for valid-padding models
    ``margin`` (pixels lost per side) and ``window``, the valid input window
    whose output is about 388 x 388.
    """
    spec = MODELS.get(config.model.name)
    meta: dict[str, Any] = {"spatial_dims": spec.spatial_dims}
    if spec.backend != "torch":
        return meta
    if spec.spatial_dims == 3:
        pz, py, px = resolve_patch_size(config, log=False)
        meta["window_3d"] = [pz, max(py, MIN_PREDICT_WINDOW_YX), max(px, MIN_PREDICT_WINDOW_YX)]
    if spec.valid_padding:
        model = _meta_model(config)
        size = model.valid_input_size(VALID_OUTPUT_WINDOW + 2 * model.output_margin)
        meta.update(margin=int(model.output_margin), window=[size, size])
    return meta


def volume_sampler(config: Config, train: LabelledVolumes, normalizer: Normalizer,
                   rng: np.random.Generator, weights: list[np.ndarray] | None = None) -> VolumePatchSampler:
    """The 3-D patch sampler over the normalised training sub-stacks (one channel).

    ``weights``: voxel weight maps of ``training.weight_map``, one ``(Z, Y, X)`` per sub-stack.
    """
    tc = config.training
    ps = tc.patch_sampling
    patch = resolve_patch_size(config)
    logger.info("3-D training patches %s (z, y, x), %s sampling", list(patch), ps.mode)
    return VolumePatchSampler([normalizer(im)[None] for im in train.images], train.labels, patch_size=patch,
                              num_classes=len(config.data.classes), background=config.data.background,
                              foreground_oversampling=tc.foreground_oversampling, rng=rng, weights=weights,
                              mode=ps.mode, labelled_fraction=ps.labelled_fraction,
                              spacing=None if ps.spacing is None else tuple(ps.spacing))


def with_aux_heads(criterion: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module:
    """Wrap ``criterion`` in :class:`~emseg.training.MultiHeadLoss` when the model has auxiliary outputs.

    A model with a non-empty ``aux_loss_weights`` dict (``hybrid2d3d`` with
    ``multi_loss``) returns ``{"main": ..., name: ...}`` in training mode; the
    loss is ``criterion(main) + sum_k weight_k * criterion(aux_k)``.
    """
    weights = getattr(model, "aux_loss_weights", None)
    if not weights:
        return criterion

    logger.info("multi-head loss: main + %s", ", ".join(f"{w:g} x {name}" for name, w in weights.items()))
    return MultiHeadLoss(criterion, weights, main_key="main")


def match_target(outputs: torch.Tensor | dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Centre-crop ``target`` ``(N, *spatial)`` to the logits' spatial size when the network shrinks its input.

    A valid-padding network's logits cover only the centre of the patch
    (``margin`` pixels less per side); the labels of that centre are the ones
    to compare with.  Targets that already match are returned unchanged.
    """
    logits = outputs["main"] if isinstance(outputs, dict) else outputs
    size, have = tuple(logits.shape[2:]), tuple(target.shape[1:])
    if size == have:
        return target
    if len(size) != len(have) or any(s > h or (h - s) % 2 for s, h in zip(size, have)):
        raise ValueError(f"network output {size} cannot be matched to the label patch {have}")
    offsets = [(h - s) // 2 for s, h in zip(size, have)]
    return target[(slice(None), *(slice(o, o + s) for o, s in zip(offsets, size)))]


def evaluate_volumes(predictor, val: LabelledVolumes, num_classes: int, background: int | None) -> EvaluationResult:
    """Per-class IoU of the 3-D sliding-window prediction of every validation sub-stack."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for image, labels in zip(val.images, val.labels):
        pred = predictor.predict_proba_volume(image).argmax(0)
        confusion += confusion_matrix(pred, labels, num_classes=num_classes, ignore_label=IGNORE_INDEX)
    return EvaluationResult.from_confusion(confusion, classes=predictor.classes, background=background)


#: Smallest training slice (pixels in y and x) a network is trained on: the smallest ``training.patch_size``.
MIN_SLICE_SIZE = 16


def fit_patch_to_data(config: Config, train) -> Config:
    """Check the training slices against ``training.patch_size``; a smaller patch when the images are smaller.

    A patch larger than every training slice is mostly padding: each step
    costs the full patch and learns from the image only.  For 2-D models (not
    valid-padding ones) the patch is shrunk, axis by axis, to the largest
    training slice rounded down to the network's divisor, with a warning that
    names the key and the image size; the returned configuration (a copy)
    carries that patch, so ``config.yaml`` of the run records what was used.
    Other models keep their patch (padded), with the same warning.

    Raises:
        DataError: every training slice is smaller than :data:`MIN_SLICE_SIZE` pixels in y or x.
    """
    shapes = [tuple(int(s) for s in lab.shape[-2:]) for lab in train.labels]
    largest = (max(s[0] for s in shapes), max(s[1] for s in shapes))
    if min(largest) < MIN_SLICE_SIZE:
        raise DataError(
            f"data.train: the training images are {largest[0]} x {largest[1]} pixels (y x) at most "
            f"({train.names[0]}); a network needs images of at least {MIN_SLICE_SIZE} x {MIN_SLICE_SIZE} "
            f"pixels to learn from: use larger images (or crops)")
    patch = list(resolve_patch_size(config, log=False))
    yx = patch[-2:]
    if yx[0] <= largest[0] and yx[1] <= largest[1]:
        return config
    spec = MODELS.get(config.model.name)
    where = f"the largest training image is {largest[0]} x {largest[1]} pixels (y x)"
    if spec.spatial_dims != 2 or spec.valid_padding:
        logger.warning("training.patch_size %s is larger than the training images (%s): patches are padded, so "
                       "each step costs the whole patch; set training.patch_size to at most %s", patch, where,
                       [*patch[:-2], *(min(p, s) for p, s in zip(yx, largest))])
        return config
    divisor = model_divisor(_meta_model(config))
    fitted = [min(p, max(MIN_SLICE_SIZE, divisor, s // divisor * divisor)) for p, s in zip(yx, largest)]
    logger.warning("training.patch_size %s is larger than the training images (%s): training on %s patches "
                   "instead (a multiple of the network's divisor %d); set training.patch_size to at most %s to "
                   "silence this", patch, where, fitted, divisor, fitted)
    config = config.model_copy(deep=True)
    config.training.patch_size = fitted
    return config


def warn_absent_classes(config: Config, train, val) -> dict[str, list[str]]:
    """Warn about classes with no pixel in the training or validation labels; returns them by split.

    A class absent from the training labels cannot be learnt; one absent from
    the validation labels has no IoU (nothing to intersect), so the validation
    mean IoU averages over the other classes only, and a network that never
    predicts it can still score 1.000.
    """
    classes = list(config.data.classes)
    absent: dict[str, list[str]] = {}
    for split, data in (("train", train), ("val", val)):
        if not len(data):
            continue
        freqs = class_frequencies(list(data.labels), len(classes))
        missing = [f"{classes[c]} ({c})" for c in range(len(classes)) if freqs[c] == 0]
        if missing:
            absent[split] = missing
    if "train" in absent:
        logger.warning("data.train: no training pixel has the class %s of data.classes: the network cannot learn "
                       "%s; add labelled examples, or remove the class from data.classes (and relabel)",
                       ", ".join(absent["train"]), "it" if len(absent["train"]) == 1 else "them")
    if "val" in absent:
        logger.warning("%s: no validation pixel has the class %s: the IoU of %s is not measured and the "
                       "validation mean IoU averages over the other classes only; validate on slices that "
                       "contain every class", "data.val" if config.data.val is not None else
                       "the validation slices (data.val_fraction)", ", ".join(absent["val"]),
                       "this class" if len(absent["val"]) == 1 else "these classes")
    return absent

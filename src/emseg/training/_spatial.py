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
    LabelledVolumes,
    Normalizer,
    VolumePatchSampler,
    load_training_data,
    load_training_volumes,
)
from emseg.evaluation import EvaluationResult, confusion_matrix
from emseg.models import MODELS, build_model

logger = logging.getLogger(__name__)

__all__ = [
    "evaluate_volumes",
    "inference_metadata",
    "load_data",
    "match_target",
    "resolve_patch_size",
    "volume_sampler",
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
    from emseg.training._loss_registry import MultiHeadLoss

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

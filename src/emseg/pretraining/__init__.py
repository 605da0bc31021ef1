"""Self-supervised pretraining on unlabelled EM (``emseg pretrain``): masked image modelling and MoCo v2.

Beside :mod:`emseg.training` in the layers (it uses data, models and the configuration; nothing below
imports it).  Its output, ``pretrained.pt``, starts a training run through ``model.init``.
"""

from emseg.pretraining._config import PretrainConfig, PretrainingOptions, load_pretrain_config
from emseg.pretraining._mim import mask_blocks, masked_input, mim_loss, mim_target
from emseg.pretraining._moco import MoCo, em_augment, encoder_layer, info_nce
from emseg.pretraining._pretrain import PretrainResult, pretrain

__all__ = [
    "MoCo",
    "PretrainConfig",
    "PretrainResult",
    "PretrainingOptions",
    "em_augment",
    "encoder_layer",
    "info_nce",
    "load_pretrain_config",
    "mask_blocks",
    "masked_input",
    "mim_loss",
    "mim_target",
    "pretrain",
]

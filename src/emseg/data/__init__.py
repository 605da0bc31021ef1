"""Loading labelled slices, normalisation, patch sampling and augmentation."""

from emseg.data._augment import augment_batch, epoch_elastic_field
from emseg.data._grain import GrainFilterCache, add_grain_channels, centre_slice
from emseg.data._load import (
    IGNORE_INDEX,
    DataError,
    LabelledSlices,
    class_frequencies,
    context_stack,
    load_training_data,
)
from emseg.data._normalize import Normalizer
from emseg.data._prefetch import BatchStream
from emseg.data._sampling import PatchSampler
from emseg.data._unlabelled import UnlabelledVolumes
from emseg.data._slices import parse_slices
from emseg.data._volume_sampling import (
    LabelledVolumes,
    VolumePatchSampler,
    augment_volume_batch,
    load_training_volumes,
)
from emseg.data._weights import guay_weight_map, unet_border_weight_map, weight_maps_for_slices

__all__ = [
    "GrainFilterCache",
    "IGNORE_INDEX",
    "BatchStream",
    "DataError",
    "LabelledSlices",
    "LabelledVolumes",
    "Normalizer",
    "PatchSampler",
    "UnlabelledVolumes",
    "VolumePatchSampler",
    "add_grain_channels",
    "augment_batch",
    "augment_volume_batch",
    "centre_slice",
    "epoch_elastic_field",
    "class_frequencies",
    "context_stack",
    "guay_weight_map",
    "load_training_data",
    "load_training_volumes",
    "parse_slices",
    "unet_border_weight_map",
    "weight_maps_for_slices",
]

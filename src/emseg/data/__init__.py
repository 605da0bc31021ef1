"""Loading labelled slices, normalisation, patch sampling and augmentation."""

from emseg.data._augment import augment_batch
from emseg.data._load import (
    IGNORE_INDEX,
    DataError,
    LabelledSlices,
    class_frequencies,
    load_training_data,
)
from emseg.data._normalize import Normalizer
from emseg.data._sampling import PatchSampler
from emseg.data._volume_sampling import (
    LabelledVolumes,
    VolumePatchSampler,
    augment_volume_batch,
    load_training_volumes,
)

__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "LabelledSlices",
    "LabelledVolumes",
    "Normalizer",
    "PatchSampler",
    "VolumePatchSampler",
    "augment_batch",
    "augment_volume_batch",
    "class_frequencies",
    "load_training_data",
    "load_training_volumes",
]

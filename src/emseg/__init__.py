"""emseg: deep-learning semantic segmentation of electron microscopy volumes.

>>> import emseg
>>> run = emseg.train("train.yaml", "runs/unet")                 # doctest: +SKIP
>>> emseg.predict("runs/unet", "stack.tif", "labels.tif")          # doctest: +SKIP
>>> emseg.evaluate("labels.tif", "truth.tif", classes=[...])       # doctest: +SKIP
"""

from __future__ import annotations

import importlib

from emseg import _monai
from emseg._version import __version__

_monai.install()  # before any emseg module imports MONAI: without transformers (see emseg._monai)

__all__ = ["__version__", "evaluate", "load_config", "predict", "train"]

#: The facade's names and the package each comes from, resolved on first use (PEP 562): `import emseg`
#: and `emseg --help` stay free of torch and MONAI, which `training`/`inference` import.
_FACADE = {"train": "emseg.training", "predict": "emseg.inference", "evaluate": "emseg.evaluation",
           "load_config": "emseg.config"}


def __getattr__(name: str):
    if name in _FACADE:
        return getattr(importlib.import_module(_FACADE[name]), name)
    raise AttributeError(f"module 'emseg' has no attribute {name!r}")

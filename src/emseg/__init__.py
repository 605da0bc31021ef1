"""emseg: deep-learning semantic segmentation of electron microscopy volumes.

>>> import emseg
>>> run = emseg.train("train.yaml", "runs/unet")                 # doctest: +SKIP
>>> emseg.predict("runs/unet", "stack.tif", "labels.tif")          # doctest: +SKIP
>>> emseg.evaluate("labels.tif", "truth.tif", classes=[...])       # doctest: +SKIP
"""

from __future__ import annotations

from emseg._version import __version__

__all__ = ["__version__", "evaluate", "load_config", "predict", "train"]


def __getattr__(name: str):
    # Lazy: `import emseg` stays cheap (no torch import) for the CLI's --help.
    if name == "train":
        from emseg.training import train

        return train
    if name == "predict":
        from emseg.inference import predict

        return predict
    if name == "evaluate":
        from emseg.evaluation import evaluate

        return evaluate
    if name == "load_config":
        from emseg.config import load_config

        return load_config
    raise AttributeError(f"module 'emseg' has no attribute {name!r}")

"""Analysis of segmentations: objects and morphometrics, volume fractions, the object index, Grad-CAM."""

from __future__ import annotations

__all__ = [
    "ObjectIndex",
    "compare_fractions",
    "compute_grad_cam",
    "explain",
    "grad_cam",
    "save_overlay",
    "measure_objects",
    "volume_fractions",
    "write_table",
]

_LAZY = {
    "measure_objects": "emseg.analysis._objects",
    "write_table": "emseg.io",  # tables are read and written by io
    "volume_fractions": "emseg.analysis._fractions",
    "compare_fractions": "emseg.analysis._fractions",
    "ObjectIndex": "emseg.analysis._index",
    "grad_cam": "emseg.analysis._gradcam",
    "compute_grad_cam": "emseg.analysis._gradcam",
    "explain": "emseg.analysis._gradcam",
    "save_overlay": "emseg.analysis._gradcam",
}


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'emseg.analysis' has no attribute {name!r}")

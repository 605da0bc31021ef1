"""Analysis of segmentations: objects and morphometrics, volume fractions, the object index, Grad-CAM."""

from __future__ import annotations

__all__ = [
    "ObjectIndex",
    "compare_fractions",
    "compute_grad_cam",
    "explain",
    "grad_cam",
    "measure_objects",
    "render_overlay",
    "resolve_layer",
    "save_overlay",
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
    "resolve_layer": "emseg.analysis._gradcam_layers",
    "explain": "emseg.analysis._explain",
    "render_overlay": "emseg.analysis._overlay",
    "save_overlay": "emseg.analysis._overlay",
}


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'emseg.analysis' has no attribute {name!r}")

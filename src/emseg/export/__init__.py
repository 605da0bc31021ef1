"""Share a model: ONNX, TorchScript and bioimage.io exports, and prediction from the exported files.

``export_model`` writes a model.pt (one network or a mean/weighted ensemble) as one network in the
requested format and checks the written file against torch on a real EM tile. ``load_exported``
(in :mod:`emseg.inference`, re-exported here) gives a :class:`~emseg.inference.Predictor` that runs an
exported ``.onnx`` file (through onnxruntime) or a bioimage.io ``.zip`` exactly as emseg runs the
original model (same normalisation, windows, blending).
"""

from emseg.constants import EXPORT_EXTRA
from emseg.export._export import FORMATS, ExportResult, export_model
from emseg.export._network import ExportRefused

# Reading an export is inference's job (emseg.inference); these names stay here for callers of emseg.export.
from emseg.inference import is_exported, load_exported, model_classes, read_metadata

__all__ = ["EXPORT_EXTRA", "FORMATS", "ExportRefused", "ExportResult", "export_model", "is_exported",
           "load_exported", "model_classes", "read_metadata"]

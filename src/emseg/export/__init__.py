"""Share a model: ONNX, TorchScript and bioimage.io exports, and prediction from the exported files.

``export_model`` writes a model.pt (one network or a mean/weighted ensemble) as one network in the
requested format and checks the written file against torch on a real EM tile; ``load_exported`` gives a
:class:`~emseg.inference.Predictor` that runs an exported ``.onnx`` file (through onnxruntime) or a
bioimage.io ``.zip`` exactly as emseg runs the original model (same normalisation, windows, blending).
"""

from emseg.export._export import EXPORT_EXTRA, FORMATS, ExportResult, export_model
from emseg.export._load import is_exported, load_exported, model_classes, read_metadata
from emseg.export._network import ExportRefused

__all__ = ["EXPORT_EXTRA", "FORMATS", "ExportRefused", "ExportResult", "export_model", "is_exported",
           "load_exported", "model_classes", "read_metadata"]

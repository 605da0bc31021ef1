"""Constants shared by every layer (the bottom of the stack: nothing here imports emseg)."""

__all__ = ["BIOIMAGEIO_METADATA", "BIOIMAGEIO_STATE", "EXPORTED_SUFFIXES", "EXPORT_EXTRA", "EXPORT_FORMAT",
           "EXPORT_METADATA_KEY", "EXPORT_VERSION", "IGNORE_INDEX"]

#: Label value of unlabelled pixels in training targets (PyTorch's ``ignore_index`` default).
IGNORE_INDEX = -100

# The exported-file contract: written by emseg.export, read by emseg.inference (load_exported).
#: ``format`` and highest ``format_version`` of the metadata an export carries.
EXPORT_FORMAT = "emseg-export"
EXPORT_VERSION = 1
#: Suffixes of exported models (ONNX file, bioimage.io zip) that prediction reads instead of a model.pt.
EXPORTED_SUFFIXES = (".onnx", ".zip")
#: Key of the emseg metadata in an ONNX file's ``metadata_props`` (TorchScript: the extra file ``emseg.json``).
EXPORT_METADATA_KEY = "emseg"
#: Files inside a bioimage.io package written by emseg.
BIOIMAGEIO_METADATA = "emseg.json"
BIOIMAGEIO_STATE = "weights_state_dict.pt"
#: How to install the optional packages of export and exported-model prediction.
EXPORT_EXTRA = "pip install 'emseg[export]'"

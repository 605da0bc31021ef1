"""Constants shared by every layer (the bottom of the stack: nothing here imports emseg)."""

__all__ = ["IGNORE_INDEX"]

#: Label value of unlabelled pixels in training targets (PyTorch's ``ignore_index`` default).
IGNORE_INDEX = -100

"""The emseg napari plugin: reader, Segment, Correct & fine-tune and Suggest widgets.

Registered with napari through the ``napari.manifest`` entry point (``napari.yaml`` here); install with
``pip install emseg[napari]``. Importing :mod:`emseg` (or this package) never imports napari or Qt: the
widget modules do, when napari loads them.
"""

__all__: list[str] = []

"""One fixed colour per class, the same in every layer, session and round."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["PALETTE", "UNSURE_COLOR", "class_colors"]

#: Colours by class index (class 0 is transparent when it is a background class); cycled past 12 classes.
PALETTE = ("#000000", "#f2c94c", "#eb5757", "#2f80ed", "#27ae60", "#bb6bd9", "#f2994a", "#56ccf2",
           "#6fcf97", "#9b51e0", "#b0b0b0", "#ff6fb5")

#: The "unsure" label of a correction (stored as the training ``ignore_label``): grey.
UNSURE_COLOR = "#808080"

_BACKGROUND_NAMES = ("background", "bg", "none", "unlabelled", "unlabeled", "outside")


def class_colors(classes: Sequence[str], *, override: Mapping[str, str] | None = None,
                 unsure: int | None = None) -> dict[int | None, str]:
    """``{label: colour}`` for a napari labels layer: a fixed colour per class index.

    Args:
        classes: class names in label order.
        override: ``{class name: colour}`` from the run's metadata (``emseg.colors``), used where given.
        unsure: the label of "unsure" pixels (grey), if any.

    Returns:
        A dict napari accepts as a labels ``colormap`` (``None``: labels without a class, transparent).
    """
    colors: dict[int | None, str] = {None: "transparent"}
    for i, name in enumerate(classes):
        if override and name in override:
            colors[i] = str(override[name])
        elif i == 0 and name.lower() in _BACKGROUND_NAMES:
            colors[i] = "transparent"
        else:
            colors[i] = PALETTE[(i - 1) % (len(PALETTE) - 1) + 1] if i else PALETTE[1]
    if unsure is not None:
        colors[int(unsure)] = UNSURE_COLOR
    return colors

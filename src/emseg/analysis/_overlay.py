"""Grad-CAM maps drawn over the EM slice: colour maps, the blended RGB image, the PNG file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from emseg.io import atomic_output

logger = logging.getLogger(__name__)

__all__ = ["COLORMAPS", "render_overlay", "save_overlay"]

COLORMAPS = ("inferno", "jet")


# matplotlib's "inferno" sampled at 0, 0.1, ..., 1 (perceptually uniform, prints in grey);
# interpolating 11 stops is within a few levels of the full table.
_INFERNO = np.array([
    [0, 0, 4], [22, 11, 57], [66, 10, 104], [106, 23, 110], [147, 38, 103], [188, 55, 84],
    [221, 81, 58], [243, 120, 25], [252, 165, 10], [246, 215, 70], [252, 255, 164],
], dtype=np.float32) / 255.0


def _colormap(values: np.ndarray, name: str) -> np.ndarray:
    """``(..., 3)`` float RGB in [0, 1] for values in [0, 1]."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    if name == "inferno":
        stops = np.linspace(0.0, 1.0, len(_INFERNO))
        return np.stack([np.interp(v, stops, _INFERNO[:, c]) for c in range(3)], axis=-1).astype(np.float32)
    if name == "jet":
        return np.stack([np.clip(1.5 - np.abs(4 * v - k), 0, 1) for k in (3, 2, 1)], axis=-1).astype(np.float32)
    raise ValueError(f"cmap {name!r}: expected one of {', '.join(COLORMAPS)}")


def _grey(image: np.ndarray) -> np.ndarray:
    """Raw EM slice to [0, 1] with a 0.5-99.5 % percentile stretch."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, (0.5, 99.5)) if image.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
    return np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(image)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, AttributeError):  # Pillow < 10.1 or no FreeType: fixed bitmap font
        return ImageFont.load_default()


def render_overlay(image: np.ndarray, cam: np.ndarray, *, title: str | None = None, cmap: str = "inferno",
                   alpha: float = 0.5) -> np.ndarray:
    """The figure :func:`save_overlay` writes, as a ``(H, W, 3)`` uint8 RGB array.

    The blended ``(Y, X)`` overlay is at rows ``[top, top + Y)`` and columns
    ``[0, X)``, where ``top`` is 0 without a title; the colour bar and its
    0 / 0.5 / 1 ticks are on the right.
    """
    from PIL import Image, ImageDraw

    image = np.asarray(image)
    cam = np.asarray(cam, dtype=np.float32)
    if image.ndim != 2 or cam.shape != image.shape:
        raise ValueError(f"image {image.shape} and cam {cam.shape} must be the same 2-D (Y, X) shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = image.shape
    grey = _grey(image)[..., None]
    blend = (1 - alpha) * grey + alpha * _colormap(cam, cmap)

    font_size = int(min(16, max(10, height // 24)))
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(probe.textbbox((0, 0), t, font=font)[2] for t in ("0", "0.5", "1"))
    gap, bar_w, tick = 6, max(10, min(24, width // 30)), 3
    top = font_size + 8 if title else 0
    fig_w = width + gap + bar_w + tick + 3 + label_w + 4
    if title:
        fig_w = max(fig_w, probe.textbbox((0, 0), title, font=font)[2] + 8)
    pad_v = font_size // 2 + 1  # room for the "1" and "0" labels at the bar's ends
    fig_h = top + height + (pad_v if height < 3 * font_size else 0)
    figure = np.full((fig_h, fig_w, 3), 255, np.uint8)
    figure[top:top + height, :width] = np.round(blend * 255).astype(np.uint8)
    x0 = width + gap
    ramp = _colormap(np.linspace(1.0, 0.0, height)[:, None].repeat(bar_w, 1), cmap)
    figure[top:top + height, x0:x0 + bar_w] = np.round(ramp * 255).astype(np.uint8)

    canvas = Image.fromarray(figure)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((x0 - 1, top, x0 + bar_w, top + height - 1), outline=(0, 0, 0))
    for value, text in ((1.0, "1"), (0.5, "0.5"), (0.0, "0")):
        y = top + round((1 - value) * (height - 1))
        draw.line((x0 + bar_w, y, x0 + bar_w + tick, y), fill=(0, 0, 0))
        box = draw.textbbox((0, 0), text, font=font)
        ty = min(max(y - (box[1] + box[3]) // 2, 0), fig_h - box[3])
        draw.text((x0 + bar_w + tick + 3, ty), text, fill=(0, 0, 0), font=font)
    if title:
        draw.text((4, 3), title, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def save_overlay(image: np.ndarray, cam: np.ndarray, path: str | os.PathLike, *, title: str | None = None,
                 cmap: str = "inferno", alpha: float = 0.5) -> Path:
    """Write the Grad-CAM map over the grey EM slice, with a colour bar, as an RGB PNG.

    Args:
        image: raw ``(Y, X)`` slice (any dtype; shown with a 0.5-99.5 %
            percentile stretch).
        cam: ``(Y, X)`` map in ``[0, 1]``.
        path: output ``.png`` (written under a temporary name, then renamed).
        title: optional line of text above the image.
        cmap: ``"inferno"`` (default, perceptually uniform) or ``"jet"``.
        alpha: weight of the colour map in the blend.

    Returns:
        The path.  The figure is ``(Y + top, X + legend, 3)`` uint8, see
        :func:`render_overlay`.  Uses Pillow (a dependency of scikit-image).
    """
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"overlay path {path}: use a .png file")
    figure = render_overlay(image, cam, title=title, cmap=cmap, alpha=alpha)
    with atomic_output(path) as tmp:
        Image.fromarray(figure).save(tmp, format="PNG")
    return path



"""Headless screenshot of napari with the emseg widgets and a segmented EPFL slice (docs/napari_emseg.png).

    DISPLAY=:99 QT_QPA_PLATFORM=offscreen PYTHONPATH=src python benchmarks/napari_screenshot.py \
        --model RUN_DIR --out docs/napari_emseg.png

Needs an X display for OpenGL (``Xvfb :99 &``); Qt itself runs offscreen.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import tifffile

EPFL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "epfl-multiclass"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/napari_emseg.png"))
    args = ap.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    import napari
    from qtpy.QtWidgets import QApplication

    from emseg.napari._finetune import FineTuneWidget
    from emseg.napari._segment import SegmentWidget
    from emseg.napari._suggest_widget import SuggestWidget

    raw = tifffile.imread(EPFL / "test_raw.tif")[:3, 128:640, 128:896]
    viewer = napari.Viewer(show=False)
    viewer.window._qt_window.resize(1500, 900)
    image = viewer.add_image(raw, name="EPFL test")
    segment, tune, suggest = SegmentWidget(viewer), FineTuneWidget(viewer), SuggestWidget(viewer)
    viewer.window.add_dock_widget(segment, name="emseg: Segment", area="right")
    viewer.window.add_dock_widget(tune, name="emseg: Correct & fine-tune", area="right")
    viewer.window.add_dock_widget(suggest, name="emseg: Suggest slices to label", area="right", tabify=True)
    segment.model.value, segment.image.value = args.model, image
    app = QApplication.instance()
    segment.segment()
    while segment.worker is not None:
        app.processEvents()
    suggest.model.value, suggest.image.value, suggest.k.value = args.model, image, 3
    suggest.suggest()
    while suggest.worker is not None:
        app.processEvents()
    suggest.results.value = 0  # jump to the slice to label first
    viewer.layers[-1].opacity = 0.6
    viewer.reset_view()
    app.processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(np.asarray(shot)).save(args.out)
    print(f"{args.out}: {shot.shape[1]} x {shot.shape[0]}; suggestions "
          + ", ".join(f"z={s.z} ({s.score:.3g})" for s in suggest.suggestions))
    viewer.close()


if __name__ == "__main__":
    main()

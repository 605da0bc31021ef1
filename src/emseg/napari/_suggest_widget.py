"""The Suggest widget: which slices to label next (:func:`emseg.active.suggest_slices`), and a jump to each.

Runs in a napari ``thread_worker`` yielding after every slice (progress bar, Cancel); the top ``k`` slices
with their scores fill a list; choosing one moves the viewer to that slice (and centres a block).
"""

from __future__ import annotations

import logging
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox, create_widget
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error

from emseg.active import SUGGEST_METHODS, Suggestion, iter_uncertainty, rank_blocks, resolve_method
from emseg.inference import load_predictor
from emseg.napari._common import WorkerButtons, follow_layers, layer_image

logger = logging.getLogger(__name__)

__all__ = ["SuggestWidget"]


def _rank(model: str, volume: Any, method: str, k: int, block: tuple[int, int] | None, threads: int):
    """Worker: uncertainty maps slice by slice (yielding ``(done, total)``), then the top ``k``."""
    import torch

    torch.set_num_threads(threads)
    predictor = load_predictor(model, tta=False)
    used = resolve_method(predictor, method)
    maps = {}
    total = int(volume.shape[0])
    for z, m in iter_uncertainty(predictor, volume, method=used):
        maps[z] = m
        yield len(maps), total
    return rank_blocks(maps, method=used, k=k, block=block)


class SuggestWidget(WorkerButtons, Container):
    """Dock widget: rank the open image's slices by the model's uncertainty; jump to the top ones."""

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.model = FileEdit(label="model", mode="r", filter="*.pt *.onnx *.zip",
                              tooltip="An ensemble (disagreement) or one model (TTA variance); run directory or file")
        self.image = create_widget(annotation=Image, label="image")
        self.method = ComboBox(label="method", choices=list(SUGGEST_METHODS), value="auto")
        self.k = SpinBox(label="how many", value=5, min=1, max=1000)
        self.block = SpinBox(label="block (0 = whole slices)", value=0, min=0, max=8192, step=64)
        self.run_button = PushButton(text="Suggest slices to label")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.results = ComboBox(label="suggestions", choices=[], nullable=True)
        self.status = Label(value="")
        self.suggestions: list[Suggestion] = []
        self.worker: Any = None
        self._progress: Any = None
        super().__init__(widgets=[self.model, self.image, self.method, self.k, self.block, self.run_button,
                                  self.cancel_button, self.results, self.status])
        self.run_button.changed.connect(self.suggest)
        self.cancel_button.changed.connect(self.cancel)
        self.results.changed.connect(self._on_select)
        follow_layers(self.viewer, self.image)

    def suggest(self) -> Any:
        """Start ranking (returns the worker; None when refused, with a notification)."""
        if self.worker is not None:
            return None
        try:
            text = str(self.model.value or "").strip()
            if not text or text == ".":
                raise ValueError("no model chosen: pick an ensemble or a model (run directory or model.pt)")
            image = layer_image(self.image.value)
        except ValueError as err:
            self._fail(err)
            return None
        import torch

        block = (int(self.block.value),) * 2 if int(self.block.value) else None
        worker = thread_worker(_rank, start_thread=False, ignore_errors=True)(
            text, image.volume, str(self.method.value), int(self.k.value), block, torch.get_num_threads())
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_done)
        worker.aborted.connect(lambda: setattr(self.status, "value", "cancelled"))
        return self._start(worker, total=image.volume.shape[0], desc="emseg: ranking slices",
                           status="ranking slices ...")

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def jump(self, index: int) -> None:
        """Move the viewer to suggestion ``index`` (0 = the best): its slice, and the centre of its block."""
        s = self.suggestions[index]
        layer = self.image.value
        if layer is not None and layer.ndim == 3:
            step = list(self.viewer.dims.current_step)
            world_z = layer.data_to_world((s.z, 0, 0))[0]
            axis = self.viewer.dims.ndim - 3
            step_size = self.viewer.dims.range[axis].step or 1
            step[axis] = int(round((world_z - self.viewer.dims.range[axis].start) / step_size))
            self.viewer.dims.current_step = tuple(step)
        if layer is not None:
            centre = layer.data_to_world(((s.z,) if layer.ndim == 3 else ()) + ((s.y[0] + s.y[1]) / 2,
                                                                                  (s.x[0] + s.x[1]) / 2))
            self.viewer.camera.center = tuple(centre[-2:])
        self.status.value = f"slice {s.z}: score {s.score:.4g} ({s.method})"

    # ------------------------------------------------------------------ main thread
    def _on_progress(self, value: tuple[int, int]) -> None:
        done, total = value
        if self._progress is not None:
            self._progress.n = done
            self._progress.refresh()
        self.status.value = f"{done} / {total} slices"

    def _on_done(self, suggestions: list[Suggestion]) -> None:
        self.suggestions = list(suggestions)
        labels = []
        for rank, s in enumerate(self.suggestions, 1):
            where = "" if self.block.value == 0 else f" y {s.y[0]}:{s.y[1]} x {s.x[0]}:{s.x[1]}"
            labels.append((f"{rank}. z={s.z}{where}  score {s.score:.4g}", rank - 1))
        self.results.choices = labels
        self.status.value = (f"top {len(labels)} by {self.suggestions[0].method}: label slice "
                             f"{self.suggestions[0].z} first" if labels else "no suggestion")
        if labels:
            self.jump(0)

    def _on_select(self, value: Any) -> None:
        chosen = value
        if isinstance(chosen, int) and 0 <= chosen < len(self.suggestions):
            self.jump(chosen)

    def _fail(self, err: BaseException) -> None:
        message = str(err) or type(err).__name__
        self.status.value = f"error: {message.splitlines()[0]}"
        logger.error("emseg suggest: %s", message)
        show_error(f"emseg: {message}")

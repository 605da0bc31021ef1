"""The Segment widget: a model, an image layer, options -> a labels layer named after the model.

The work runs in a napari ``thread_worker`` (the viewer stays responsive) that yields after every slice (in
memory) or block (blockwise), so napari's progress bar moves and Cancel stops it at the next yield:

- in memory: each slice is predicted with the predictor's block interface
  (``block_input`` / ``predict_labels_block``, what the blockwise engine runs, identical to ``emseg predict``);
  a cancelled run adds no layer;
- blockwise (a chunked image opened from a file, or more than :data:`BLOCKWISE_VOXELS`): the blockwise engine
  writes ``<image>_<model>.zarr`` beside the input one block per step (:func:`emseg.inference.predict_blockwise`
  with ``max_blocks``); the finished store opens lazily through the emseg reader. A cancelled run removes the
  store, so nothing half-written is left that looks like a result.

Errors (a model that is not a model, an RGB image, a failing run) go to napari's notifications.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox, create_widget
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info

from emseg.inference import load_predictor, predict_blockwise
from emseg.napari._colors import class_colors
from emseg.napari._common import WorkerButtons, LayerImage, follow_layers, labels_layer_kwargs, layer_image, model_name
from emseg.napari._reader import emseg_labels_metadata, read_layers

logger = logging.getLogger(__name__)

__all__ = ["SegmentWidget", "blockwise_output", "predictor_options", "segment_slices"]


def predictor_options(*, tta: bool, window: tuple[int, int] | None, calibrated: bool, precision: str) -> dict[str, Any]:
    """:func:`~emseg.inference.load_predictor` options as ``emseg predict`` passes them (overlap from the
    receptive field)."""
    options: dict[str, Any] = {"precision": precision, "tta": tta, "overlap": "auto"}
    if window is not None:
        options["window"] = window
    if not calibrated:
        options["calibrated"] = False
    return options


def segment_slices(predictor: Any, volume: Any):
    """Generator: predict ``(Z, Y, X)`` ``volume`` one slice at a time, yielding ``(done, total)`` after each.

    Returns (``StopIteration.value``) the ``(Z, Y, X)`` labels. 2-D predictors go through their block interface
    (one slice per block, the blockwise engine's route, equal to ``predict_volume``); 3-D ones predict the
    volume in one step.
    """
    shape = tuple(int(s) for s in volume.shape)
    if getattr(predictor, "spatial_dims", 2) == 3:
        labels, _ = predictor.predict_volume(np.asarray(volume))
        yield shape[0], shape[0]
        return labels
    dtype = np.uint8 if predictor.num_classes <= 255 else np.uint16
    labels = np.empty(shape, dtype)
    for z in range(shape[0]):
        region = (slice(z, z + 1), slice(0, shape[1]), slice(0, shape[2]))
        box = predictor.block_input(region, shape)
        data = np.asarray(volume[box])
        labels[z] = predictor.predict_labels_block(data, origin=tuple(b.start for b in box), region=region,
                                                   shape=shape)[0]
        yield z + 1, shape[0]
    return labels


def blockwise_output(image_path: str, model: str | os.PathLike) -> Path:
    """``<image>_<model>.zarr`` beside the input image (a container's dataset name joins the stem)."""
    file, _, inner = image_path.partition(":") if not Path(image_path).exists() else (image_path, "", "")
    base = Path(file.rstrip("/\\"))
    stem = base.name.split(".")[0] + (("_" + inner.strip("/").replace("/", "_")) if inner else "")
    return base.with_name(f"{stem}_{model_name(model)}.zarr")


def _blockwise_steps(model: str, image_path: str, output: Path, options: dict[str, Any],
                     block: tuple[int, int, int] | None):
    """Generator: predict ``image_path`` into ``output`` one block per step, yielding ``(done, total)``."""
    done, first = 0, True
    while True:
        predict_blockwise(model, image_path, output, max_blocks=1, progress=False, block=block,
                          overwrite=first, resume=None if first else True, **options)
        first = False
        meta = emseg_labels_metadata(str(output)) or {}
        done += 1
        total = int(meta.get("n_blocks", done))
        yield min(done, total), total
        if meta.get("status") == "complete":
            return output


class SegmentWidget(WorkerButtons, Container):
    """Dock widget: pick a model, an image layer and options; Segment / Cancel."""

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.model = FileEdit(label="model", mode="r", filter="*.pt *.onnx *.zip",
                              tooltip="A run directory (type or paste its path), model.pt, an ensemble's model.pt, "
                                      "or an exported .onnx / bioimage.io .zip")
        self.image = create_widget(annotation=Image, label="image")
        self.tta = CheckBox(text="test-time augmentation (4x slower)", value=False)
        self.window = SpinBox(label="window (0 = model's)", value=0, min=0, max=4096, step=16)
        self.calibration = CheckBox(text="apply the model's calibration", value=True)
        self.precision = ComboBox(label="precision", choices=["auto", "fp32", "bf16"], value="auto")
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        #: Block shape (z, y, x) for blockwise runs; None: the engine's choice.
        self.block: tuple[int, int, int] | None = None
        self.worker: Any = None
        self._progress: Any = None
        self._output: Path | None = None
        super().__init__(widgets=[self.model, self.image, self.tta, self.window, self.calibration, self.precision,
                                  self.run_button, self.cancel_button, self.status])
        self.run_button.changed.connect(self.segment)
        self.cancel_button.changed.connect(self.cancel)
        follow_layers(self.viewer, self.image)

    # ------------------------------------------------------------------ actions
    def segment(self) -> Any:
        """Start segmenting (returns the worker; None when the inputs are refused, with a notification)."""
        if self.worker is not None:
            show_info("a segmentation is already running: wait for it or press Cancel")
            return None
        try:
            model = self._model_path()
            image = layer_image(self.image.value)
            window = (int(self.window.value),) * 2 if int(self.window.value) else None
            options = predictor_options(tta=bool(self.tta.value), window=window,
                                        calibrated=bool(self.calibration.value), precision=str(self.precision.value))
        except (ValueError, FileNotFoundError) as err:
            self._fail(err)
            return None
        name = model_name(model)
        if image.blockwise():
            self._output = blockwise_output(image.path, model)
            worker = thread_worker(_blockwise_steps, start_thread=False, ignore_errors=True)(str(model), image.path, self._output,
                                                                          options, self.block)
        else:
            self._output = None
            import torch

            worker = thread_worker(self._in_memory, start_thread=False, ignore_errors=True)(str(model), image, options,
                                                                         torch.get_num_threads())
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_done(result, name=name, model=model, image=image,
                                                             options=options))
        worker.aborted.connect(self._on_cancelled)
        return self._start(worker, total=image.volume.shape[0], desc=f"emseg: segmenting {image.name}",
                           status=f"segmenting {image.name} with {name} ...")

    def cancel(self) -> None:
        """Stop the running segmentation at its next slice or block; nothing half-written is kept."""
        if self.worker is not None:
            self.status.value = "cancelling ..."
            self.worker.quit()

    # ------------------------------------------------------------------ worker side
    @staticmethod
    def _in_memory(model: str, image: LayerImage, options: dict[str, Any], threads: int):
        import torch

        torch.set_num_threads(threads)  # the viewer's count in this worker thread too, as `emseg predict` runs
        predictor = load_predictor(model, **options)
        labels = yield from segment_slices(predictor, image.volume)
        return labels, list(predictor.classes)

    # ------------------------------------------------------------------ main thread
    def _model_path(self) -> Path:
        text = str(self.model.value or "").strip()
        if not text or text == ".":
            raise ValueError("no model chosen: pick a run directory, model.pt, ensemble, .onnx or bioimage.io .zip")
        path = Path(text)
        if not path.exists():
            raise FileNotFoundError(f"model {path} does not exist: pick a run directory, model.pt, ensemble, "
                                    ".onnx or bioimage.io .zip")
        return path

    def _on_progress(self, value: tuple[int, int]) -> None:
        done, total = value
        if self._progress is not None:
            if self._progress.total != total:
                self._progress.total = total
            self._progress.n = done
            self._progress.refresh()
        self.status.value = f"{done} / {total} {'blocks' if self._output is not None else 'slices'}"

    def _on_done(self, result: Any, *, name: str, model: Path, image: LayerImage, options: dict[str, Any]) -> None:
        if isinstance(result, Path):  # blockwise: the store opens lazily through the emseg reader
            data, meta, _ = read_layers(str(result))[0]
            meta["name"] = name
            meta["metadata"]["emseg"].update({"model": str(model), "image": image.name, "options": options})
            layer = self.viewer.add_labels(data, **meta)
        else:
            labels, classes = result
            data = labels[0] if image.is_2d else labels
            # the prediction is kept so the Correct & fine-tune widget can tell which slices were painted
            kwargs = labels_layer_kwargs(name, classes, model=str(model), image=image.name, options=options,
                                         prediction=data.copy())
            kwargs["colormap"] = class_colors(classes, unsure=len(classes))
            layer = self.viewer.add_labels(data, **kwargs)
        layer.scale = self.image.value.scale if self.image.value is not None else layer.scale
        self.status.value = f"done: labels layer {layer.name!r}"

    def _on_cancelled(self) -> None:
        if self._output is not None and self._output.exists():
            shutil.rmtree(self._output, ignore_errors=True)  # unfinished: remove it, nothing half-written stays
        self.status.value = "cancelled: nothing was added or kept"

    def _fail(self, err: BaseException) -> None:
        message = str(err) or type(err).__name__
        if self._output is not None and self._output.exists() and self.worker is not None:
            meta = emseg_labels_metadata(str(self._output)) or {}
            if meta.get("status") != "complete":
                shutil.rmtree(self._output, ignore_errors=True)
        self.status.value = f"error: {message.splitlines()[0]}"
        logger.error("emseg segment: %s", message)
        show_error(f"emseg: {message}")

"""The Correct & fine-tune widget: painted slices become training labels; rounds of fine-tuning re-segment.

1. Segment (the Segment widget), then paint corrections into the labels layer on any slices; paint the
   "unsure" label (grey, one past the last class) where you cannot tell: it is stored as the ignore label.
2. "Add these slices to training" stores the slices that differ from the model's prediction (or the slices
   you name) in the session folder (:class:`emseg.active.ActiveSession`); the other slices stay unlabelled.
3. "Fine-tune" trains a new round from the current model's weights for N minutes in the background on the
   original training data plus every correction, keeps it as ``round-<n>/`` (config, model, scores) and
   re-segments the image into a new labels layer, so rounds can be compared (and an earlier one reloaded
   with the Segment widget). "Cancel" stops the round at its next training step
   (:class:`emseg.training.StopOnEvent`): the round is removed and the session keeps its current model;
   cancelled while re-segmenting, the (finished) round is kept but not loaded as a layer.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import Container, FileEdit, FloatSpinBox, Label, LineEdit, PushButton, SpinBox, create_widget
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info

from emseg.active import ActiveSession
from emseg.data import parse_slices
from emseg.inference import load_predictor
from emseg.napari._colors import class_colors
from emseg.napari._common import WorkerButtons, follow_layers, labels_layer_kwargs, layer_image
from emseg.napari._segment import segment_slices
from emseg.training import StopOnEvent

logger = logging.getLogger(__name__)

__all__ = ["FineTuneWidget", "painted_slices"]


def painted_slices(labels: np.ndarray, prediction: np.ndarray) -> list[int]:
    """Slices ``z`` of a ``(Z, Y, X)`` labels volume that differ from the model's ``prediction``."""
    labels, prediction = np.asarray(labels), np.asarray(prediction)
    if labels.ndim == 2:
        labels, prediction = labels[None], prediction[None]
    return [int(z) for z in np.nonzero((labels != prediction).reshape(labels.shape[0], -1).any(axis=1))[0]]


def _fine_tune_round(session: ActiveSession, minutes: float, overrides: dict[str, Any] | None, volume: np.ndarray,
                     threads: int, stop: threading.Event):
    """Worker: one round, then the image re-segmented with the round's model; ``stop`` set: cancelled
    (``labels`` is None: the round was cancelled, or it finished and its re-segmentation was)."""
    import torch

    torch.set_num_threads(threads)
    result = session.fine_tune(minutes=minutes, overrides=overrides, callbacks=[StopOnEvent(stop)])
    if not result.complete:
        return result, None, None
    predictor = load_predictor(result.run_dir, overlap="auto")
    steps = segment_slices(predictor, volume)
    try:
        while True:
            next(steps)
            if stop.is_set():
                return result, None, list(predictor.classes)
    except StopIteration as done:
        labels = done.value
    return result, labels, list(predictor.classes)


class FineTuneWidget(WorkerButtons, Container):
    """Dock widget: add corrected slices to training, fine-tune (or cancel the round), re-segment."""

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.labels_layer = create_widget(annotation=Labels, label="labels")
        self.image = create_widget(annotation=Image, label="image")
        self.session_dir = FileEdit(label="session folder", mode="d",
                                    tooltip="Where corrections and rounds are kept (default: beside the model's run)")
        self.slices = LineEdit(label="slices", value="",
                               tooltip="Empty: the slices you painted; or e.g. '3,7' or '0:4'")
        self.unsure = SpinBox(label="unsure label", value=0, min=0, max=65535,
                              tooltip="Paint this label where you are unsure: stored as the ignore label")
        self.minutes = FloatSpinBox(label="fine-tune minutes", value=5.0, min=0.05, max=600.0, step=0.5)
        self.add_button = PushButton(text="Add these slices to training")
        self.tune_button = PushButton(text="Fine-tune")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.run_button = self.tune_button  # WorkerButtons: Run / Cancel
        self.status = Label(value="")
        #: Extra configuration keys for the rounds (tests, benchmarks): e.g. ``{"training": {"epochs": 2}}``.
        self.overrides: dict[str, Any] | None = None
        self.worker: Any = None
        self._progress: Any = None
        self._stop = threading.Event()
        super().__init__(widgets=[self.labels_layer, self.image, self.session_dir, self.slices, self.unsure, self.minutes,
                                  self.add_button, self.tune_button, self.cancel_button, self.status])
        self.add_button.changed.connect(self.add_slices)
        self.tune_button.changed.connect(self.fine_tune)
        self.cancel_button.changed.connect(self.cancel)
        self.labels_layer.changed.connect(self._on_labels_changed)
        follow_layers(self.viewer, self.labels_layer, self.image)
        self._on_labels_changed(self.labels_layer.value)

    # ------------------------------------------------------------------ helpers
    def _meta(self, layer: Any = None) -> dict[str, Any]:
        layer = layer if layer is not None else self.labels_layer.value
        if layer is None:
            raise ValueError("no labels layer chosen: segment an image first (Segment widget)")
        meta = (layer.metadata or {}).get("emseg")
        if not meta or "model" not in meta:
            raise ValueError(f"labels layer {layer.name!r} was not made by emseg's Segment widget: segment the image "
                             "with it first, then paint your corrections into its labels layer")
        return meta

    def _on_labels_changed(self, layer: Any) -> None:
        meta = (getattr(layer, "metadata", None) or {}).get("emseg") or {}
        classes = meta.get("classes")
        if classes:
            self.unsure.value = len(classes)  # one past the last class, grey in the layer's colours
            layer.colormap = class_colors(classes, unsure=len(classes))
        model = meta.get("base_run") or meta.get("model")
        if model and not str(self.session_dir.value or "").strip(". "):
            run = Path(model).parent if Path(model).is_file() else Path(model)
            self.session_dir.value = run.parent / f"{run.name}-session"
        image_name = meta.get("image")
        if image_name and image_name in self.viewer.layers:
            self.image.value = self.viewer.layers[image_name]

    def session(self) -> ActiveSession:
        """The session of the chosen folder (started from the labels' model if new)."""
        meta = self._meta()
        folder = str(self.session_dir.value or "").strip()
        if not folder or folder == ".":
            raise ValueError("no session folder: pick a folder where corrections and rounds are kept")
        return ActiveSession(folder, base_run=meta.get("base_run") or meta["model"])

    # ------------------------------------------------------------------ actions
    def add_slices(self) -> Path | None:
        """Store the painted (or named) slices as training labels; returns the corrections folder."""
        try:
            layer = self.labels_layer.value
            meta = self._meta(layer)
            image = layer_image(self.image.value)
            labels = np.asarray(layer.data)
            labels3 = labels[None] if labels.ndim == 2 else labels
            text = str(self.slices.value).strip()
            prediction = meta.get("prediction")
            if text:
                zs = parse_slices(text, labels3.shape[0])
            elif prediction is not None:
                zs = painted_slices(labels, prediction)
            else:
                raise ValueError(f"labels layer {layer.name!r} keeps no copy of the prediction (a blockwise result): "
                                 "name the corrected slices under 'slices', e.g. '3,7'")
            if not zs:
                raise ValueError("nothing painted since the last segmentation: correct some slices first (or name "
                                 "them under 'slices')")
            session = self.session()
            folder = session.add_corrections(np.asarray(image.volume), labels3, zs, image_name=image.name,
                                             unsure=int(self.unsure.value))
        except (ValueError, FileNotFoundError, OSError) as err:
            self._fail(err)
            return None
        if prediction is not None:  # added slices no longer count as newly painted
            np.asarray(prediction)[...] = labels
        self.status.value = f"added slice(s) {', '.join(map(str, zs))} of {image.name} -> {folder.name}"
        return folder

    def fine_tune(self) -> Any:
        """Start a fine-tuning round in the background (returns the worker; None if refused)."""
        if self.worker is not None:
            self.status.value = "a round is already running"
            return None
        try:
            session = self.session()
            image = layer_image(self.image.value)
            if not session.corrections():
                raise ValueError("no corrections in this session yet: paint corrections and press 'Add these slices "
                                 "to training' first")
            volume = np.asarray(image.volume)
        except (ValueError, FileNotFoundError, OSError) as err:
            self._fail(err)
            return None
        import torch

        self._stop = threading.Event()
        worker = thread_worker(_fine_tune_round, start_thread=False, ignore_errors=True)(
            session, float(self.minutes.value), self.overrides, volume, torch.get_num_threads(), self._stop)
        worker.returned.connect(lambda result: self._on_done(result, session=session, image=image))
        self.add_button.enabled = False
        return self._start(worker, total=0, desc="emseg: fine-tuning",
                           status=f"fine-tuning for up to {self.minutes.value:g} min ...")

    def cancel(self) -> None:
        """Stop the running round at its next training step (or its re-segmentation at the next slice)."""
        if self.worker is not None:
            self.status.value = "cancelling ..."
            self._stop.set()

    # ------------------------------------------------------------------ main thread
    def _on_done(self, result: Any, *, session: ActiveSession, image: Any) -> None:
        train_result, labels, classes = result
        round_name = Path(train_result.run_dir).name
        if not train_result.complete:
            self._notify(f"fine-tuning cancelled: {round_name} was removed; the current model is still "
                         f"{session.current_model()}")
            return
        if labels is None:
            self._notify(f"{round_name} finished (validation mean IoU {train_result.best_val_mean_iou:.3f}); its "
                         f"re-segmentation was cancelled: load {train_result.run_dir} with the Segment widget")
            return
        name = f"{session.base_run.name} {round_name}"
        data = labels[0] if image.is_2d else labels
        kwargs = labels_layer_kwargs(name, classes, model=str(train_result.model_path), base_run=str(session.base_run),
                                     image=image.name, round=round_name, prediction=data.copy())
        kwargs["colormap"] = class_colors(classes, unsure=len(classes))
        layer = self.viewer.add_labels(data, **kwargs)
        if self.image.value is not None:
            layer.scale = self.image.value.scale
        self.labels_layer.value = layer
        self.status.value = (f"{round_name}: validation mean IoU {train_result.best_val_mean_iou:.3f} "
                             f"-> labels layer {name!r}")

    def _on_finished(self) -> None:
        WorkerButtons._on_finished(self)
        self.add_button.enabled = True

    def _notify(self, message: str) -> None:
        self.status.value = message
        logger.info("emseg fine-tune: %s", message)
        show_info(f"emseg: {message}")

    def _fail(self, err: BaseException) -> None:
        message = str(err) or type(err).__name__
        self.status.value = f"error: {message.splitlines()[0]}"
        logger.error("emseg fine-tune: %s", message)
        show_error(f"emseg: {message}")

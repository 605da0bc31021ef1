"""``emseg evaluate --metrics ...``: the metric groups beyond the per-class table, printed and saved."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from emseg.io import open_image, read_class_probabilities


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_groups(console, scores: dict[str, Any]) -> None:
    """Rich tables for each computed group except the pixel table printed before."""
    from rich.table import Table

    pixel = scores.get("pixel")
    if pixel:
        table = Table(title="one-vs-rest pixel rates", title_justify="left")
        for header in ("class", "accuracy", "sensitivity", "specificity", "PPV", "NPV"):
            table.add_column(header, justify="left" if header == "class" else "right")
        for name, v in pixel["per_class"].items():
            table.add_row(name, *(_fmt(v[k]) for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv")))
        console.print(table)
        for name, value in pixel["mean_iou_subsets"].items():
            console.print(f"MIoU({name}) = {_fmt(value)}")
    for group, columns in (("auc", ("auc_roc", "average_precision")),
                           ("boundary", ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")),
                           ("objects", ("objects", "detected_percent", "under_detected_percent", "missed_percent", "aji", "pq")),
                           ):
        part = scores.get(group)
        if not part:
            continue
        table = Table(title=f"{group} scores", title_justify="left")
        table.add_column("class")
        for c in columns:
            table.add_column(c, justify="right")
        for name, v in part["per_class"].items():
            table.add_row(name, *(_fmt(v[c]) for c in columns))
        if group == "boundary" and "membrane" in part:
            table.add_row(f"membrane map ({part['membrane']['class']}, thinned)",
                          *(_fmt(part["membrane"][c]) for c in columns))
        console.print(table)
    if scores.get("hausdorff"):
        hd = scores["hausdorff"]
        console.print("95th-percentile Hausdorff distance: " + ", ".join(
            f"{n} {_fmt(v)}" for n, v in hd["per_class"].items()) + f"; mean {_fmt(hd['mean'])}")
    if scores.get("sweep"):
        sweep = scores["sweep"]
        table = Table(title=f"threshold sweep ({sweep['class']})", title_justify="left")
        for c in ("threshold", "iou", "f1", "precision", "recall"):
            table.add_column(c, justify="right")
        for row in zip(*(sweep[c] for c in ("threshold", "iou", "f1", "precision", "recall"))):
            table.add_row(*(_fmt(float(v)) for v in row))
        console.print(table)


def save_json(path: Path, scores: dict[str, Any]) -> None:
    from emseg.evaluation import json_safe

    Path(path).write_text(json.dumps(json_safe(scores), indent=2, allow_nan=False) + "\n")


def evaluate_groups(pred_in, truth_in, result, *, metrics, probabilities, subset, slices, ignore_label, per_slice,
                     membrane_class):
    """The --metrics groups (emseg.evaluation.score_segmentation) on the same inputs."""
    from emseg.data import parse_slices
    from emseg.evaluation import score_segmentation
    def load(x):
        if isinstance(x, np.ndarray):
            return x
        with open_image(x) as image:
            return np.asarray(image.array)

    pred, truth = load(pred_in), load(truth_in)
    probs = None
    if probabilities is not None:
        probs = read_class_probabilities(probabilities, result.classes)
        if slices is not None:
            probs = probs[:, parse_slices(slices, probs.shape[1])]
        if probs.shape[1:] != truth.shape:
            raise ValueError(f"--probabilities {probabilities}: shape {probs.shape[1:]} per class does not match the "
                             f"labels' {truth.shape}")
    return score_segmentation(pred, truth, classes=result.classes, metrics=metrics or "pixel", probabilities=probs,
                              subsets=subset, ignore_label=ignore_label, background=result.background,
                              per_slice=per_slice, membrane_class=membrane_class)


# ----------------------------------------------------------------------------- input checks of `emseg evaluate`


def class_names(classes: str | None, model: Path | None) -> tuple[list[str] | None, str | None]:
    """``--classes`` / ``--model`` -> (class names or None, where they came from, for messages).

    Raises:
        ValueError: both are given and name different classes (neither silently wins).
    """
    names = [c.strip() for c in classes.split(",")] if classes else None
    if model is None:
        return names, None if names is None else f"--classes {classes}"
    from emseg.export import model_classes  # a model.pt, or an exported .onnx / bioimage.io .zip

    model_names = [str(c) for c in model_classes(model)]
    if names is not None and names != model_names:
        raise ValueError(f"--classes and --model name different classes: --classes gives {len(names)} "
                         f"({', '.join(names)}) but model {model} has {len(model_names)} "
                         f"({', '.join(model_names)}). Pass only one of them: --model alone scores with the "
                         "model's classes, --classes alone with yours.")
    return model_names, f"model {model}"


def check_not_empty(pred_in: Any, truth_in: Any, prediction: str, ground_truth: str) -> None:
    """Refuse label images without pixels: their scores would all be n/a."""
    def shape(x: Any) -> tuple[int, ...]:
        if isinstance(x, np.ndarray):
            return tuple(x.shape)
        with open_image(x) as image:
            return tuple(int(s) for s in image.array.shape)

    empty = [f"{role} {path} (shape {s})" for role, path, s in
             (("prediction", prediction, shape(pred_in)), ("ground truth", ground_truth, shape(truth_in)))
             if math.prod(s) == 0]
    if empty:
        raise ValueError(f"{' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty: there is no pixel to "
                         "score. Pass label images with at least one pixel (was the file written completely?).")


def check_counted(result, ground_truth: str, ignore_label: int | None, slices: str | None) -> None:
    """Refuse a result that counted no pixel (every truth pixel ignored): its scores would all be n/a."""
    if int(np.asarray(result.confusion).sum()) == 0:
        where = f" in --slices {slices}" if slices else ""
        raise ValueError(f"every pixel of ground truth {ground_truth}{where} equals --ignore-label {ignore_label}: "
                         "there is no pixel to score. Check --ignore-label (and --slices).")


def explain_label_error(err: Any, *, prediction: str, ground_truth: str, source: str | None,
                        ignore_label: int | None) -> ValueError:
    """A :class:`~emseg.evaluation._confusion.LabelRangeError` in the terms of the command line."""
    is_truth = err.which == "truth"
    role, path = ("ground truth", ground_truth) if is_truth else ("prediction", prediction)
    values = ", ".join(str(v) for v in err.values)
    if err.distinct > len(err.values):
        values += f", ... ({err.distinct} distinct values)"
    where = ""
    if ignore_label is not None:
        where = f" (pixels whose ground truth is --ignore-label {ignore_label} aside)"
    if err.num_classes is None:
        fix = "Labels must be class indices 0, 1, 2, ...: convert the image to class labels"
        if is_truth:
            fix += ", or pass --ignore-label VALUE if a negative VALUE marks unlabelled pixels"
        return ValueError(f"{role} {path} holds negative label values {values}{where}. {fix}.")
    k = err.num_classes
    needed = max(err.values) + 1
    fix = f"pass --classes with one name per label value (at least {needed} names, label i = name i)"
    if source and source.startswith("model"):
        fix = f"check that {path} was made for this model, or {fix} instead of --model"
    if is_truth and err.distinct == 1:
        fix += f", or --ignore-label {err.values[-1]} if {err.values[-1]} marks unlabelled pixels"
    return ValueError(f"{role} {path} holds label values {values}{where}, outside the {k} classes of "
                      f"{source or 'the class list'} (valid labels 0 to {k - 1}). To fix, {fix}.")

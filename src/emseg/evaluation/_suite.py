"""Every metric group in one call: what ``emseg evaluate --metrics`` and ``emseg benchmark`` report.

A *metric group* is a family of scores that needs the same inputs:

========== =====================================================================
pixel      per-class IoU, F1 (Dice), accuracy, sensitivity, specificity, PPV, NPV;
           mean IoU / F1 over all classes, the foreground and named subsets;
           multi-class accuracy; the confusion matrix
auc        per-class AUC-ROC and PR-AUC (average precision) from probabilities
sweep      binary IoU/F1/precision/recall of ``p >= t`` for t = 0, 0.1, ..., 1
boundary   V_Rand / V_Info (foreground-restricted, thinned for membrane maps)
objects    Meyer's detection score, AJI and panoptic quality per class
hausdorff  95th-percentile Hausdorff distance per class
========== =====================================================================

Undefined scores (a class absent from both prediction and truth, a class
without objects) are ``nan`` in Python and ``null`` in JSON, and means skip them.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np

from ._metrics import _nanmean, evaluate
from ._pixel import mean_iou, pixel_scores, probability_auc, threshold_sweep

from emseg._registry import suggest

logger = logging.getLogger(__name__)

__all__ = ["METRIC_GROUPS", "flatten_scores", "parse_metrics", "parse_subsets", "score_segmentation"]

#: Metric groups and what each reports (shown by ``emseg evaluate --help``).
METRIC_GROUPS: dict[str, str] = {
    "pixel": "per-class IoU, F1, accuracy, sensitivity, specificity, PPV, NPV; mean IoU (all, foreground, subsets); confusion",
    "auc": "per-class AUC-ROC and PR-AUC (average precision); needs probabilities",
    "sweep": "IoU/F1/precision/recall of p >= t for t = 0, 0.1, ..., 1 (binary tasks); needs probabilities",
    "boundary": "V_Rand / V_Info: thinned membrane scores (binary) or per-class component scores",
    "objects": "Meyer's detection (detected / under-detected / missed), AJI and panoptic quality per class",
    "hausdorff": "95th-percentile Hausdorff distance per class (pixels, or spacing units)",
}
_NEEDS_PROBABILITIES = ("auc", "sweep")


def parse_metrics(text: str | Sequence[str] | None) -> list[str]:
    """``"pixel,auc"`` / ``["pixel", "auc"]`` / ``"all"`` -> validated group names, in table order.

    Raises:
        ValueError: an unknown group name (the message lists the valid ones).
    """
    if text is None:
        return ["pixel"]
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if str(p).strip()]
    if not parts:
        raise ValueError(f"metrics must name at least one group of: {', '.join(METRIC_GROUPS)} (or 'all')")
    if "all" in parts:
        return list(METRIC_GROUPS)
    unknown = [p for p in parts if p not in METRIC_GROUPS]
    if unknown:
        raise ValueError(
            f"unknown metric group {unknown[0]!r}.{suggest(unknown[0], list(METRIC_GROUPS))} "
            f"Choose from: {', '.join(METRIC_GROUPS)} or all"
        )
    return [g for g in METRIC_GROUPS if g in parts]


def parse_subsets(specs: Sequence[str] | dict[str, Sequence[str]] | None, classes: Sequence[str]) -> dict[str, list[str]]:
    """Named class subsets for mean IoU: ``["org=mitochondrion,er"]`` or ``{"org": [...]}``.

    Raises:
        ValueError: a malformed spec, an empty subset or a class not in ``classes``.
    """
    if not specs:
        return {}
    names = [str(c) for c in classes]
    if isinstance(specs, dict):
        items = [(str(k), [str(c) for c in v]) for k, v in specs.items()]
    else:
        items = []
        for spec in specs:
            name, sep, members = str(spec).partition("=")
            if not sep or not name.strip():
                raise ValueError(f"subset {spec!r}: write NAME=CLASS,CLASS,... e.g. org=mitochondrion,vesicle")
            items.append((name.strip(), [m.strip() for m in members.split(",") if m.strip()]))
    out: dict[str, list[str]] = {}
    for name, members in items:
        if not members:
            raise ValueError(f"subset {name!r} names no class")
        unknown = [m for m in members if m not in names]
        if unknown:
            raise ValueError(f"subset {name!r} names classes that do not exist: {unknown}; classes are {names}")
        out[name] = members
    return out


def _class_index(name_or_index: Any, names: list[str], key: str) -> int:
    if isinstance(name_or_index, (int, np.integer)) and not isinstance(name_or_index, bool):
        if 0 <= int(name_or_index) < len(names):
            return int(name_or_index)
    elif str(name_or_index) in names:
        return names.index(str(name_or_index))
    raise ValueError(f"{key} must be a class name or index of {names}; got {name_or_index!r}")


def score_segmentation(
    prediction: Any,
    truth: Any,
    *,
    classes: Sequence[str],
    metrics: Sequence[str] | str = ("pixel",),
    probabilities: Any = None,
    subsets: dict[str, Sequence[str]] | Sequence[str] | None = None,
    ignore_label: int | None = None,
    background: int | None = 0,
    per_slice: bool = False,
    spacing: float | Sequence[float] | None = None,
    membrane_class: str | int | None = None,
    positive_class: str | int | None = None,
) -> dict[str, Any]:
    """Compute the chosen metric groups of a label prediction against the truth.

    Args:
        prediction: integer class labels ``(Z, Y, X)`` (or ``(Y, X)``).
        truth: integer class labels of the same shape.
        classes: the ``K`` class names, name ``i`` for label ``i``.
        metrics: group names (see :data:`METRIC_GROUPS`) or ``"all"``.
        probabilities: ``(K, *prediction.shape)`` class probabilities; needed
            by ``auc`` and ``sweep`` (without them those groups are skipped
            with a warning).
        subsets: named class subsets for mean IoU, e.g. ``{"org": ["mito"]}``
            (Guay's MIoU(org)); reported as ``mean_iou_subsets``.
        ignore_label: truth value of unlabelled pixels; never counted.
        background: class index left out of the foreground means and of the
            object groups; ``None`` for none.
        per_slice: objects and boundary components slice by slice along axis
            0 (right for stacks of unrelated 2-D slices), and Hausdorff
            distances per slice averaged over the slices where they are defined.
        spacing: pixel size per axis for Hausdorff distances.
        membrane_class: class whose mask is a membrane map; the ``boundary``
            group then gives the ISBI thinned V_Rand / V_Info of the regions it
            encloses. Default: class 1 for a two-class task, otherwise none
            (per-class component scores only).
        positive_class: foreground class of the threshold sweep; default 1 for
            a two-class task, otherwise the sweep is skipped.

    Returns:
        A dict with ``classes``, ``metrics`` and one entry per computed group
        (see :func:`flatten_scores` for the flat view). Floats may be ``nan``.
    """
    from ._boundary import class_rand_info_scores, membrane_segments, rand_info_scores
    from ._objects import detection_scores, hausdorff_distance, object_scores

    names = [str(c) for c in classes]
    groups = parse_metrics(metrics if not isinstance(metrics, str) else metrics)
    subsets = parse_subsets(subsets, names)
    pred = np.asarray(prediction)
    true = np.asarray(truth)
    out: dict[str, Any] = {"classes": names, "metrics": groups}
    if probabilities is None and any(g in groups for g in _NEEDS_PROBABILITIES):
        logger.warning("metrics %s need probabilities: skipped", [g for g in groups if g in _NEEDS_PROBABILITIES])
    if "pixel" in groups:
        result = evaluate(pred, true, classes=names, ignore_label=ignore_label, background=background)
        rates = pixel_scores(result.confusion, names)
        per_class = {n: {**{k: result.per_class[n][k] for k in ("iou", "f1")}, **rates[n],
                         "truth_pixels": result.per_class[n]["truth_pixels"],
                         "predicted_pixels": result.per_class[n]["predicted_pixels"]} for n in names}
        out["pixel"] = {
            "accuracy": result.accuracy,
            "mean_iou": result.mean_iou,
            "mean_iou_foreground": result.mean_iou_foreground,
            "mean_f1": result.mean_f1,
            "mean_f1_foreground": result.mean_f1_foreground,
            "mean_iou_subsets": {s: mean_iou(result.confusion, names, subset=m) for s, m in subsets.items()},
            "per_class": per_class,
            "confusion": result.confusion.tolist(),
        }
    if "auc" in groups and probabilities is not None:
        auc = probability_auc(probabilities, true, classes=names, ignore_label=ignore_label)
        out["auc"] = {
            "per_class": auc,
            "mean_auc_roc": _nanmean(np.array([v["auc_roc"] for v in auc.values()])),
            "mean_average_precision": _nanmean(np.array([v["average_precision"] for v in auc.values()])),
        }
    if "sweep" in groups and probabilities is not None:
        positive = positive_class if positive_class is not None else (1 if len(names) == 2 else None)
        if positive is None:
            logger.info("threshold sweep skipped: name positive_class for a %d-class task", len(names))
        else:
            k = _class_index(positive, names, "positive_class")
            sweep = threshold_sweep(np.asarray(probabilities)[k], true, positive_label=k, ignore_label=ignore_label)
            out["sweep"] = {"class": names[k], **{key: np.asarray(v).tolist() for key, v in sweep.items()}}
    if "boundary" in groups:
        boundary: dict[str, Any] = {
            "per_class": class_rand_info_scores(pred, true, classes=names, background=background,
                                                ignore_label=ignore_label, per_slice=per_slice)
        }
        membrane = membrane_class if membrane_class is not None else (1 if len(names) == 2 else None)
        if membrane is not None:
            m = _class_index(membrane, names, "membrane_class")
            true_regions = membrane_segments(true == m)
            if ignore_label is not None:
                true_regions[true == ignore_label] = 0
            boundary["membrane"] = {"class": names[m],
                                    **rand_info_scores(membrane_segments(pred == m), true_regions)}
        out["boundary"] = boundary
    if "objects" in groups:
        detection = detection_scores(pred, true, classes=names, background=background,
                                     ignore_label=ignore_label, per_slice=per_slice)
        quality = object_scores(pred, true, classes=names, background=background,
                                ignore_label=ignore_label, per_slice=per_slice)
        per_class = {n: {**detection[n], **quality[n]} for n in detection}
        total = sum(v["objects"] for v in detection.values())
        out["objects"] = {
            "per_class": per_class,
            "detected_percent": 100.0 * sum(v["detected"] for v in detection.values()) / total if total else math.nan,
            "mean_aji": _nanmean(np.array([v["aji"] for v in quality.values()], dtype=float)),
            "mean_pq": _nanmean(np.array([v["pq"] for v in quality.values()], dtype=float)),
        }
    if "hausdorff" in groups:
        if per_slice and pred.ndim == 3:
            per_z = [hausdorff_distance(pred[z], true[z], classes=names, background=background,
                                        spacing=None if spacing is None else _last_two(spacing),
                                        ignore_label=ignore_label) for z in range(pred.shape[0])]
            distances = {n: _nanmean(np.array([d[n] for d in per_z], dtype=float)) for n in per_z[0]} if per_z else {}
        else:
            distances = hausdorff_distance(pred, true, classes=names, background=background, spacing=spacing,
                                           ignore_label=ignore_label)
        out["hausdorff"] = {"per_class": distances,
                            "mean": _nanmean(np.array(list(distances.values()), dtype=float))}
    return out


def _last_two(spacing: float | Sequence[float]) -> float | Sequence[float]:
    return spacing if np.ndim(spacing) == 0 else list(spacing)[-2:]


def flatten_scores(scores: dict[str, Any]) -> dict[str, float]:
    """One flat ``{column: number}`` view of :func:`score_segmentation`'s result (for tables and CSV).

    Columns: ``accuracy``, ``mean_iou``, ``mean_iou_foreground``, ``mean_f1``,
    ``mean_f1_foreground``, ``miou_<subset>``, ``<score>/<class>`` for each
    per-class pixel rate (``iou``, ``f1``, ``accuracy``, ``sensitivity``,
    ``specificity``, ``ppv``, ``npv``), ``mean_auc_roc``, ``mean_pr_auc``,
    ``auc_roc/<class>``, ``pr_auc/<class>``, ``v_rand/<class>``,
    ``v_info/<class>``, ``mean_v_rand``, ``mean_v_info``, ``v_rand_membrane``, ``v_info_membrane``,
    ``detected_percent``, ``mean_aji``, ``mean_pq``, ``detected_percent/<class>``,
    ``aji/<class>``, ``pq/<class>``, ``hd95``, ``hd95/<class>``.
    """
    flat: dict[str, float] = {}
    pixel = scores.get("pixel")
    if pixel:
        for key in ("accuracy", "mean_iou", "mean_iou_foreground", "mean_f1", "mean_f1_foreground"):
            flat[key] = pixel[key]
        for name, value in pixel["mean_iou_subsets"].items():
            flat[f"miou_{name}"] = value
        for key in ("iou", "f1", "accuracy", "sensitivity", "specificity", "ppv", "npv"):
            for name, values in pixel["per_class"].items():
                flat[f"{key}/{name}"] = values[key]
    auc = scores.get("auc")
    if auc:
        flat["mean_auc_roc"] = auc["mean_auc_roc"]
        flat["mean_pr_auc"] = auc["mean_average_precision"]
        for name, values in auc["per_class"].items():
            flat[f"auc_roc/{name}"] = values["auc_roc"]
            flat[f"pr_auc/{name}"] = values["average_precision"]
    sweep = scores.get("sweep")
    if sweep:
        f1 = np.asarray(sweep["f1"], dtype=float)
        if np.isfinite(f1).any():
            best = int(np.nanargmax(f1))
            flat["sweep_best_threshold"] = float(sweep["threshold"][best])
            flat["sweep_best_f1"] = float(f1[best])
    boundary = scores.get("boundary")
    if boundary:
        for name, values in boundary["per_class"].items():
            flat[f"v_rand/{name}"] = values["v_rand"]
            flat[f"v_info/{name}"] = values["v_info"]
        flat["mean_v_rand"] = _nanmean(np.array([v["v_rand"] for v in boundary["per_class"].values()], dtype=float))
        flat["mean_v_info"] = _nanmean(np.array([v["v_info"] for v in boundary["per_class"].values()], dtype=float))
        if "membrane" in boundary:
            flat["v_rand_membrane"] = boundary["membrane"]["v_rand"]
            flat["v_info_membrane"] = boundary["membrane"]["v_info"]
    objects = scores.get("objects")
    if objects:
        for key in ("detected_percent", "mean_aji", "mean_pq"):
            flat[key] = objects[key]
        for name, values in objects["per_class"].items():
            flat[f"detected_percent/{name}"] = values["detected_percent"]
            flat[f"aji/{name}"] = values["aji"]
            flat[f"pq/{name}"] = values["pq"]
    hausdorff = scores.get("hausdorff")
    if hausdorff:
        flat["hd95"] = hausdorff["mean"]
        for name, value in hausdorff["per_class"].items():
            flat[f"hd95/{name}"] = value
    return {k: (float(v) if v is not None else math.nan) for k, v in flat.items()}

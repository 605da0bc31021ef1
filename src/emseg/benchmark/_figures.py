"""Figures of the benchmark report: the metrics heatmap, per-class IoU bars, training curves, cost vs score,
and the TP/FP/FN overlays of every run, each as a PNG data URI (matplotlib imported lazily: the ``report`` extra)."""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np


logger = logging.getLogger(__name__)

#: Heatmap columns: (label, metric key, higher is better).
_HEATMAP = [
    ("mIoU all", "mean_iou", True), ("mIoU fg", "mean_iou_foreground", True), ("mean F1", "mean_f1", True),
    ("accuracy", "accuracy", True), ("AUC-ROC", "mean_auc_roc", True), ("PR-AUC", "mean_pr_auc", True),
    ("V_Rand", "mean_v_rand", True), ("V_Info", "mean_v_info", True), ("V_Rand membr.", "v_rand_membrane", True),
    ("V_Info membr.", "v_info_membrane", True), ("detected %", "detected_percent", True), ("AJI", "mean_aji", True),
    ("PQ", "mean_pq", True), ("HD95", "hd95", False),
]

# TP, FP, FN colours of the overlays (RGB); TN pixels keep the (dimmed) grey image.
_TP, _FP, _FN = (0, 200, 0), (230, 0, 200), (255, 200, 0)


def _pyplot():
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError("the benchmark report draws its figures with matplotlib: pip install 'emseg[report]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _value(record: dict[str, Any], key: str) -> float | None:
    value = record["metrics"].get(key[8:]) if key.startswith("metrics.") else record.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _cell(value: float | None, decimals: int, scale: float) -> str:
    if value is None:
        return "n/a"
    shown = value / scale
    return f"{shown:,.0f}" if decimals == 0 else f"{shown:.{decimals}f}"


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure_uri(fig) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return _png_uri(buffer.getvalue())


def _array_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return _png_uri(buffer.getvalue())


def _img(uri: str, ident: str, alt: str, css: str = "figure") -> str:
    return f'<img id="{html.escape(ident)}" class="{css}" alt="{html.escape(alt)}" src="{uri}">'


# ----------------------------------------------------------------------------- figures


def _heatmap(runs: list[dict]) -> str:
    plt = _pyplot()
    columns = [(label, key, up) for label, key, up in _HEATMAP if any(_value(r, "metrics." + key) is not None for r in runs)]
    classes = [k[4:] for k in runs[0]["metrics"] if k.startswith("iou/")]
    columns += [(f"IoU {c}", f"iou/{c}", True) for c in classes]
    raw = np.array([[_value(r, "metrics." + key) if _value(r, "metrics." + key) is not None else np.nan
                     for _, key, _ in columns] for r in runs], dtype=float)
    norm = np.full(raw.shape, np.nan)
    for j, (_, _, up) in enumerate(columns):
        col = raw[:, j]
        if np.isfinite(col).any():
            lo, hi = np.nanmin(col), np.nanmax(col)
            scaled = np.where(np.isfinite(col), 1.0 if hi == lo else (col - lo) / (hi - lo), np.nan)
            norm[:, j] = scaled if up else 1 - scaled
    fig, ax = plt.subplots(figsize=(max(6, 0.75 * len(columns) + 2.5), 0.45 * len(runs) + 2.2))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), [c[0] for c in columns], rotation=50, ha="right", fontsize=9)
    ax.set_yticks(range(len(runs)), [r["run"] for r in runs], fontsize=9)
    for i in range(raw.shape[0]):
        for j in range(raw.shape[1]):
            text = "n/a" if not np.isfinite(raw[i, j]) else (f"{raw[i, j]:.0f}" if abs(raw[i, j]) >= 10 else f"{raw[i, j]:.2f}")
            dark = np.isfinite(norm[i, j]) and norm[i, j] < 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_title("Scores normalised per column: 1 (yellow) = best method, 0 (purple) = worst; numbers are raw scores",
                 fontsize=10)
    return _figure_uri(fig)


def _iou_bars(runs: list[dict]) -> str:
    plt = _pyplot()
    classes = [k[4:] for k in runs[0]["metrics"] if k.startswith("iou/")]
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(classes) + 2), 4))
    width = 0.8 / len(runs)
    cmap = plt.get_cmap("tab20")
    for i, r in enumerate(runs):
        values = [_value(r, f"metrics.iou/{c}") for c in classes]
        ax.bar(np.arange(len(classes)) + (i - (len(runs) - 1) / 2) * width,
               [np.nan if v is None else v for v in values], width, label=r["run"], color=cmap(i % 20))
    ax.set_xticks(range(len(classes)), classes, rotation=20, ha="right")
    ax.set_ylabel("IoU on the test slices")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("Per-class IoU (missing bar: class absent from prediction and truth, undefined)", fontsize=10)
    return _figure_uri(fig)


def _curves(runs: list[dict]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    cmap = plt.get_cmap("tab20")
    for i, r in enumerate(runs):
        points = [(c["elapsed_s"] / 60, c["val_mean_iou"]) for c in r.get("curve") or []
                  if c.get("val_mean_iou") is not None and c.get("elapsed_s") is not None]
        if points:
            x, y = zip(*points)
            ax.plot(x, y, marker="o" if len(points) < 3 else None, ms=4, label=r["run"], color=cmap(i % 20))
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("validation mean IoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("Validation curves (a random forest is fitted once: one point)", fontsize=10)
    return _figure_uri(fig)


def _complexity(runs: list[dict]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    flops = [r["flops_per_slice"] for r in runs if r.get("flops_per_slice")]
    biggest = max(flops) if flops else 1
    for i, r in enumerate(runs):
        params, score = r.get("parameters"), _value(r, "metrics.mean_iou_foreground")
        if not params or score is None:
            continue
        if r["kind"] == "ensemble":
            size = 60 + 1500 * r["flops_per_slice"] / biggest if r.get("flops_per_slice") else 80
            ax.scatter(params, score, s=size, alpha=0.5, marker="D", edgecolors="k", color="tab:purple")
        elif r.get("flops_per_slice"):
            ax.scatter(params, score, s=60 + 1500 * r["flops_per_slice"] / biggest, alpha=0.5, edgecolors="k")
        else:
            ax.scatter(params, score, s=80, marker="X", color="tab:red")
        ax.annotate(r["run"], (params, score), fontsize=7, xytext=(6, 10 * (i % 3) - 10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (networks: weights; random forest: tree nodes, red X)")
    ax.set_ylabel("mean IoU, foreground classes")
    ax.grid(alpha=0.3)
    ax.set_title("Complexity: bubble area = FLOPs per test slice (purple diamonds: ensembles, summed over members)",
                 fontsize=10)
    return _figure_uri(fig)


# ----------------------------------------------------------------------------- overlays


def _grey(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    lo, hi = np.percentile(image, (1, 99)) if image.size else (0, 1)
    scaled = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    return (scaled * 255).astype(np.uint8)


def _overlay(grey: np.ndarray, pred: np.ndarray, truth: np.ndarray, k: int, ignore: int | None) -> np.ndarray:
    rgb = np.repeat((grey * 0.6).astype(np.uint8)[..., None], 3, axis=2)  # TN: the dimmed image
    p, t = pred == k, truth == k
    for mask, colour in ((p & t, _TP), (p & ~t, _FP), (~p & t, _FN)):
        if ignore is not None:
            mask &= truth != ignore
        rgb[mask] = colour
    return rgb


def _labels_rgb(labels: np.ndarray, num_classes: int) -> np.ndarray:
    plt = _pyplot()
    colours = (np.array([plt.get_cmap("tab10")(i % 10)[:3] for i in range(num_classes)]) * 255).astype(np.uint8)
    colours[0] = (30, 30, 30)
    return colours[np.clip(labels, 0, num_classes - 1)]


def _overlay_section(results: dict, runs: list[dict], base: Path, image: np.ndarray, truth: np.ndarray) -> str:
    classes = results["classes"]
    options = results.get("overlays") or {}
    background = results.get("background", 0)
    wanted = options.get("classes") or [c for i, c in enumerate(classes) if i != background]
    width = int(options.get("width") or 240)
    ignore = results.get("ignore_label")
    parts = []
    for z in options.get("slices") or [0]:
        if not 0 <= z < image.shape[0]:
            logger.warning("overlay slice %d is outside the %d test slices; skipped", z, image.shape[0])
            continue
        step = max(1, math.ceil(image.shape[2] / width))
        grey = _grey(image[z])[::step, ::step]
        t = truth[z][::step, ::step]
        empty = "<td></td>" * len(wanted)
        rows = [f"<tr><th>test slice {z}</th><th>labels</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in wanted) + "</tr>",
                f"<tr><th>raw image</th><td>{_img(_array_uri(grey), f'overlay-z{z}-image', f'test slice {z}, raw image', 'tile')}</td>{empty}</tr>",
                f"<tr><th>ground truth</th><td>{_img(_array_uri(_labels_rgb(t, len(classes))), f'overlay-z{z}-truth', f'test slice {z}, ground-truth labels', 'tile')}</td>{empty}</tr>"]
        for n, r in enumerate(runs):
            path = base / r["labels_path"]
            if not path.is_file():
                logger.warning("%s: %s is missing; no overlay", r["run"], path)
                continue
            name = r["run"]
            p = np.asarray(np.load(path, mmap_mode="r")[z][::step, ::step])
            cells = [_img(_array_uri(_labels_rgb(p, len(classes))), f"overlay-z{z}-r{n}-labels",
                          f"test slice {z}, labels predicted by {name}", "tile")]
            for c in wanted:
                k = classes.index(c)
                cells.append(_img(_array_uri(_overlay(grey, p, t, k, ignore)), f"overlay-z{z}-r{n}-c{k}",
                                  f"test slice {z}, {c}: true/false positives and negatives of {name}", "tile"))
            rows.append(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append(f'<table class="overlays">{"".join(rows)}</table>')
    return "\n".join(parts)

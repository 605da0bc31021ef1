"""The benchmark report: one self-contained HTML file (inline CSS/JS, figures as PNG data URIs).

Figures are drawn with matplotlib (the ``report`` extra, imported lazily) on
the Agg backend; overlay tiles are encoded with Pillow. Nothing is loaded from
the network. An inline script writes a JSON verdict into ``<pre id="verdict">``
once the page has loaded (every image's ``naturalWidth`` and every table
cell), which the browser test reads with ``chromium --headless --dump-dom``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from emseg.config import VolumeSource
from emseg.io import atomic_output

logger = logging.getLogger(__name__)

__all__ = ["TABLE_COLUMNS", "write_report"]

#: Results table: (header, key, decimals, scale). ``key`` is a record field or
#: ``metrics.<name>``; the cell shows ``value / scale`` with ``decimals`` digits.
TABLE_COLUMNS: list[tuple[str, str, int, float]] = [
    ("mIoU (all)", "metrics.mean_iou", 3, 1.0),
    ("mIoU (fg)", "metrics.mean_iou_foreground", 3, 1.0),
    ("mean F1", "metrics.mean_f1", 3, 1.0),
    ("accuracy", "metrics.accuracy", 3, 1.0),
    ("AUC-ROC", "metrics.mean_auc_roc", 3, 1.0),
    ("PR-AUC", "metrics.mean_pr_auc", 3, 1.0),
    ("V_Rand", "metrics.mean_v_rand", 3, 1.0),
    ("V_Info", "metrics.mean_v_info", 3, 1.0),
    ("detected %", "metrics.detected_percent", 1, 1.0),
    ("AJI", "metrics.mean_aji", 3, 1.0),
    ("PQ", "metrics.mean_pq", 3, 1.0),
    ("HD95 px", "metrics.hd95", 1, 1.0),
    ("parameters", "parameters", 0, 1.0),
    ("GFLOPs/slice", "flops_per_slice", 2, 1e9),
    ("train s", "train_seconds", 1, 1.0),
    ("to best s", "time_to_best_s", 1, 1.0),
    ("MVox/s", "mvox_per_s", 3, 1.0),
]

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


# ----------------------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1800px;color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
p.note{color:#555;max-width:70em} img.figure{max-width:100%;height:auto;display:block;margin:8px 0}
table.results{border-collapse:collapse;font-size:12px} table.results th,table.results td{border:1px solid #ccc;padding:3px 6px}
table.results td.num{text-align:right;font-variant-numeric:tabular-nums} table.results tr.ensemble{background:#f3f0ff} table.results tr.annotator{background:#fff6e0}
table.results thead th{background:#f4f4f4;position:sticky;top:0}
table.overlays{border-collapse:collapse;font-size:12px} table.overlays td,table.overlays th{padding:2px;vertical-align:middle}
table.overlays th{text-align:left;max-width:12em;word-break:break-all;font-weight:600} img.tile{display:block;margin:auto}
div.scroll{overflow-x:auto;max-width:100%}
.legend span{display:inline-block;width:14px;height:14px;vertical-align:middle;margin:0 4px 0 12px;border:1px solid #999}
#verdict{display:none}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {id: img.id, alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth};
  });
  var rows = Array.prototype.map.call(document.querySelectorAll('#results tbody tr'), function (tr) {
    return {run: tr.getAttribute('data-run'), cells: Array.prototype.map.call(tr.querySelectorAll('td[data-key]'), function (td) {
      return {key: td.getAttribute('data-key'), decimals: +td.getAttribute('data-decimals'),
              scale: +td.getAttribute('data-scale'), text: td.textContent};
    })};
  });
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  document.getElementById('verdict').textContent = JSON.stringify({images: images, rows: rows, broken: broken});
  document.title = document.title + (broken ? ' [' + broken + ' broken images]' : '');
});
"""


def _table(runs: list[dict], subset_keys: list[str]) -> str:
    columns = TABLE_COLUMNS[:2] + [(f"MIoU({k[5:]})", f"metrics.{k}", 3, 1.0) for k in subset_keys] + TABLE_COLUMNS[2:]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("run", "model", "loss", "seed", *[c[0] for c in columns]))
    body = []
    for r in runs:
        cells = [f"<th>{html.escape(r['run'])}</th>", f"<td>{html.escape(str(r['model']))}</td>",
                 f"<td>{html.escape(str(r['loss']))}</td>",
                 f"<td>{'' if r.get('seed') is None else r['seed']}{'' if r.get('fold') is None else ' fold ' + str(r['fold'])}</td>"]
        for _, key, decimals, scale in columns:
            cells.append(f'<td class="num" data-key="{html.escape(key)}" data-decimals="{decimals}" data-scale="{scale:g}">'
                         f"{_cell(_value(r, key), decimals, scale)}</td>")
        body.append(f'<tr class="{r["kind"]}" data-run="{html.escape(r["run"])}">{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table id="results" class="results"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def write_report(
    results_path: str | os.PathLike,
    html_path: str | os.PathLike,
    *,
    test_image: np.ndarray | None = None,
    test_truth: np.ndarray | None = None,
) -> Path:
    """Write the self-contained HTML report of a benchmark's ``results.json``.

    Args:
        results_path: ``results.json`` written by :func:`emseg.benchmark.run_benchmark`;
            the runs' ``test_labels.npy`` are looked up next to it.
        html_path: the report to write (atomically).
        test_image, test_truth: the test slices ``(Z, Y, X)`` for the overlays;
            read from the ``test`` entry of the results when not given.

    Returns:
        ``html_path``.
    """
    results_path = Path(results_path)
    results = json.loads(results_path.read_text())
    runs = results["runs"]
    if not runs:
        raise ValueError(f"{results_path} holds no runs; nothing to report")
    if test_image is None or test_truth is None:
        from emseg.benchmark._config import _load_volume

        test_image, test_truth, _ = _load_volume(VolumeSource.model_construct(**results["test"]))
    subset_keys = [k for k in runs[0]["metrics"] if k.startswith("miou_")]
    figures = [
        ("heatmap", "Which method is best on which metric?", _heatmap(runs),
         "Heatmap of every method (rows) against every metric (columns), min-max normalised per metric as in "
         "EM-stellar's Figure 2; grey cells are undefined scores.",
         "No single metric tells the whole story: compare rows across the columns that matter for your question "
         "(pixel overlap, object counts, boundaries)."),
        ("iou-bars", "How well is each organelle segmented?", _iou_bars(runs),
         "Bar chart of the intersection over union per class for each method on the test slices.",
         "IoU = overlap / union of predicted and true pixels of a class; 1 is perfect. Rare classes are usually hardest."),
        ("curves", "How did training progress?", _curves(runs),
         "Line chart of validation mean IoU against training minutes for each run.",
         "A curve still rising at the end means a longer budget would probably help."),
        ("complexity", "What does accuracy cost?", _complexity(runs),
         "Bubble chart of model parameters against foreground mean IoU, bubble size proportional to FLOPs per slice.",
         "Up and to the left is better: high scores from small, cheap models."),
    ]
    sections = []
    for ident, title, uri, alt, note in figures:
        sections.append(f'<h2 id="{ident}-title">{html.escape(title)}</h2><p class="note">{html.escape(note)}</p>'
                        + _img(uri, f"fig-{ident}", alt))
    overlays = _overlay_section(results, runs, results_path.parent, np.asarray(test_image), np.asarray(test_truth))
    class_colours = _labels_rgb(np.arange(len(results["classes"])), len(results["classes"]))
    legend = ('<p class="legend">Labels column: ' + " ".join(
        f'<span style="background:rgb{tuple(int(v) for v in class_colours[k])}"></span>{html.escape(c)}'
        for k, c in enumerate(results["classes"])) + "</p>")
    legend += (f'<p class="legend">Each class column: <span style="background:rgb{_TP}"></span>true positive '
              f'<span style="background:rgb{_FP}"></span>false positive (predicted, not in the truth) '
              f'<span style="background:rgb{_FN}"></span>false negative (missed) '
              f'<span style="background:#555"></span>true negative (dimmed image)</p>')
    meta = (f"{len([r for r in runs if r['kind'] == 'run'])} runs, {len([r for r in runs if r['kind'] == 'ensemble'])} ensembles; "
            f"classes: {', '.join(results['classes'])}; test image: {results['test'].get('image')} "
            f"(slices {results['test'].get('slices') or 'all'}); benchmark file: {results.get('benchmark')}")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(results.get('title') or 'emseg benchmark')}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>{html.escape(results.get('title') or 'emseg benchmark')}</h1>
<p class="note">{html.escape(meta)}</p>
<p class="note">Every network was trained under the time budget in the table, then segmented the held-out test slices.
Scores: mIoU = mean intersection over union (all classes / foreground only); F1 = Dice; AUC-ROC and PR-AUC rank the
predicted probabilities; V_Rand / V_Info = split/merge-aware agreement of connected regions per class (1 = perfect);
detected % = true objects with more than 80 % of their pixels found (Meyer et al.); AJI and PQ = object-level overlap;
HD95 = 95th-percentile boundary distance in pixels (lower is better). n/a = undefined (e.g. a class absent from both
prediction and truth).</p>
<h2 id="table-title">Results table</h2>
{_table(runs, subset_keys)}
{''.join(sections)}
<h2 id="overlays-title">Where are the errors?</h2>
<p class="note">Overlays of the chosen test slices: ground truth and each method's labels, then one column per class.</p>
{legend}
{overlays}
<pre id="verdict"></pre>
<script>{_SCRIPT}</script>
</body></html>
"""
    html_path = Path(html_path)
    with atomic_output(html_path, overwrite=True) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    logger.info("report: %s", html_path)
    return html_path

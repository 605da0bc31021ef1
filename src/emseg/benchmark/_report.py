"""The benchmark report: one self-contained HTML file (inline CSS/JS, figures as PNG data URIs).

Figures are drawn with matplotlib (the ``report`` extra, imported lazily) on
the Agg backend; overlay tiles are encoded with Pillow. Nothing is loaded from
the network. An inline script writes a JSON verdict into ``<pre id="verdict">``
once the page has loaded (every image's ``naturalWidth`` and every table
cell), which the browser test reads with ``chromium --headless --dump-dom``.
"""

from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path

import numpy as np

from emseg.config import VolumeSource
from emseg.io import atomic_output

from emseg.benchmark._figures import (
    _FN,
    _FP,
    _TP,
    _cell,
    _complexity,
    _curves,
    _heatmap,
    _img,
    _iou_bars,
    _labels_rgb,
    _overlay_section,
    _value,
)

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

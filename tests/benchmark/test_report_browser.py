"""The benchmark report in a real headless browser (Debian's chromium): figures load, table matches results.json."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium(args: list[str], profile: Path) -> str:
    assert Path(CHROMIUM).exists(), "chromium is needed: make test installs it (scripts/test-system-deps), or apt-get install -y chromium"
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def browser_verdict(report: Path, profile: Path) -> dict:
    """Load the page, let its script run, read the JSON verdict it wrote into <pre id=verdict>."""
    dom = _chromium(["--virtual-time-budget=10000", "--dump-dom", report.resolve().as_uri()], profile)
    match = re.search(r'<pre id="verdict">(.*?)</pre>', dom, re.S)
    assert match and match.group(1).strip(), "the page's script did not run (no verdict)"
    return json.loads(html.unescape(match.group(1)))


def problems(verdict: dict, results: dict) -> list[str]:
    """Every broken figure and every table cell that differs from results.json."""
    found = [f"image {i['id']!r} did not load" for i in verdict["images"] if not (i["complete"] and i["naturalWidth"] > 0)]
    ids = [i["id"] for i in verdict["images"]]
    found += [f"image without id or alt: {i}" for i in verdict["images"] if not i["id"] or not i["alt"]]
    found += [f"duplicate image id {x!r}" for x in sorted({x for x in ids if ids.count(x) > 1})]
    runs = {r["run"]: r for r in results["runs"]}
    if [row["run"] for row in verdict["rows"]] != [r["run"] for r in results["runs"]]:
        found.append(f"table rows {[row['run'] for row in verdict['rows']]} != runs in results.json")
    for row in verdict["rows"]:
        record = runs.get(row["run"], {})
        for cell in row["cells"]:
            key = cell["key"]
            value = record.get("metrics", {}).get(key[8:]) if key.startswith("metrics.") else record.get(key)
            text = cell["text"].strip()
            if value is None:
                if text != "n/a":
                    found.append(f"{row['run']} {key}: shows {text!r}, results.json has null")
                continue
            try:
                shown = float(text.replace(",", "")) * cell["scale"]
            except ValueError:
                found.append(f"{row['run']} {key}: shows {text!r}, results.json has {value}")
                continue
            if abs(shown - value) > 0.51 * 10 ** -cell["decimals"] * cell["scale"]:
                found.append(f"{row['run']} {key}: shows {text!r}, results.json has {value}")
    return found


def test_report_in_headless_chromium(tiny_benchmark, tmp_path):
    _, out, results = tiny_benchmark
    report = out / "report.html"
    text = report.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing fetched
    verdict = browser_verdict(report, tmp_path / "profile")
    # heatmap, IoU bars, curves, complexity + per overlay slice: image, truth, and labels + 6 classes per row
    assert len(verdict["images"]) == 4 + 2 * (2 + 7 * len(results["runs"]))
    assert {"fig-heatmap", "fig-iou-bars", "fig-curves", "fig-complexity"} <= {i["id"] for i in verdict["images"]}
    assert problems(verdict, results) == []
    assert len(verdict["rows"]) == 7 and len(verdict["rows"][0]["cells"]) >= 15
    shot = tmp_path / "report.png"
    _chromium(["--hide-scrollbars", "--window-size=1400,2400", f"--screenshot={shot}", report.resolve().as_uri()],
              tmp_path / "profile2")
    import numpy as np
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 2400)
        assert np.unique(np.asarray(image.convert("L").resize((64, 64)))).size > 20  # not a blank page


def test_broken_image_and_wrong_row_are_reported(tiny_benchmark, tmp_path):
    _, out, results = tiny_benchmark
    text = (out / "report.html").read_text()
    # corrupt the IoU bar chart's PNG data and the first run's mean IoU cell
    start = text.index('id="fig-iou-bars"')
    src = text.index('src="data:image/png;base64,', start) + len('src="data:image/png;base64,')
    text = text[:src] + "AAAAbroken" + text[src + 200:]
    first = results["runs"][0]["metrics"]["mean_iou"]
    cell = f'data-key="metrics.mean_iou" data-decimals="3" data-scale="1">{first:.3f}<'
    assert cell in text
    text = text.replace(cell, cell.replace(f"{first:.3f}", f"{first + 0.1:.3f}"), 1)
    bad = tmp_path / "report.html"
    bad.write_text(text)
    verdict = browser_verdict(bad, tmp_path / "profile")
    found = problems(verdict, results)
    assert "image 'fig-iou-bars' did not load" in found
    assert any(f.startswith(f"{results['runs'][0]['run']} metrics.mean_iou: shows") for f in found)
    assert len(found) == 2
    assert verdict["broken"] == 1

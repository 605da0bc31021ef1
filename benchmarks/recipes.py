"""Training recipes on EPFL multi-class at equal CPU budget, plus two ablations.

    .venv/bin/python benchmarks/recipes.py --minutes 30

Runs (each trained for ``--minutes`` of wall-clock training, seed 0, on the 27
training slices with 10 % held out for validation, scored on the 5 test slices):

* each preset of ``emseg recipes`` (``emseg train CONFIG --recipe NAME``); a
  preset whose network is not registered in this emseg (``unet-resnet34`` for
  wae-net, ``hybrid2d3d`` for densecell-2d3d) runs with ``unet2d`` instead,
  which the table and JSON say (``model`` column);
* grain-filter ablation: fibsem-meyer with ``preprocess: {grain_filter: [650, 3200]}``
  (Meyer et al.'s thresholds) against fibsem-meyer without;
* loss ablation on the rare classes (PSD, axon): the default recipe with plain
  cross-entropy (no class weights) against focal + Dice (everything else equal).

densecell-2d3d's edge terms are set for EPFL: membranes (1) diffused onto
background (0) and vesicles (4), mitochondrial boundary (3) onto mitochondrion (2).

Resumable: a run whose entry is in the JSON with the same settings is skipped.
Writes benchmarks/results/recipes.json and prints a table.  Smoke test:

    benchmarks/recipes.py --minutes 0.1 --features 4,8 --patch-size 64 --iterations-per-epoch 2 \\
        --train-slices 0:3 --test-slices 0:1 --threads 1 --out /tmp/recipes-smoke/recipes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import re
import time
from pathlib import Path

import numpy as np
import tifffile
import yaml

import emseg
from emseg.models import MODELS
from emseg.config import load_recipe

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "epfl-multiclass"
CLASSES = ["background", "membrane", "mitochondrion", "mitochondrial_boundary", "vesicle", "psd", "axon"]
RARE = ["psd", "axon"]

#: run name -> (recipe or None, training/preprocess overrides, ablation group)
RUNS: dict[str, tuple[str | None, dict]] = {
    "wae-net": ("wae-net", {}),
    "densecell-2d3d": ("densecell-2d3d", {"training": {"weight_map": {"kind": "guay", "w0": 1.0, "class_balance": True,
        "edge_terms": [{"source": [1], "target": [0, 4]}, {"source": [3], "target": [2]}]}}}),
    "fibsem-meyer": ("fibsem-meyer", {}),
    "em-stellar": ("em-stellar", {}),
    "fibsem-meyer +grain": ("fibsem-meyer", {"preprocess": {"grain_filter": [650, 3200]}}),
    "default, plain CE": (None, {"training": {"loss": {"ce": 1.0}, "class_weights": None}}),
    "default, focal + Dice": (None, {"training": {"loss": {"focal": 1.0, "dice": 1.0}}}),
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _model_for(recipe: str | None, features: list[int] | None) -> tuple[dict, str]:
    """The model section and a note: the preset's network if registered, else unet2d."""
    wanted = (load_recipe(recipe).get("model") or {}).get("name") if recipe else None
    name = wanted if wanted in MODELS else "unet2d"
    note = "" if wanted in (None, name) else f"{wanted} not in this emseg: unet2d instead"
    model: dict = {"name": name}
    if recipe and name == wanted:
        model.update({k: v for k, v in load_recipe(recipe)["model"].items() if k != "name"})
    elif recipe == "fibsem-meyer":
        model.update(norm="batch", dropout=0.5)
    if features:
        model["features"] = features
    return model, note


def _test_subset(args, work: Path) -> tuple[Path, Path]:
    if not args.test_slices:
        return args.data / "test_raw.tif", args.data / "test_labels.tif"
    from emseg.data import parse_slices

    raw, lab = tifffile.imread(args.data / "test_raw.tif"), tifffile.imread(args.data / "test_labels.tif")
    zs = parse_slices(args.test_slices, raw.shape[0])
    paths = work / "test_raw_subset.tif", work / "test_labels_subset.tif"
    tifffile.imwrite(paths[0], raw[zs], photometric="minisblack")
    tifffile.imwrite(paths[1], lab[zs], photometric="minisblack")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per run (wall clock)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/recipes"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--features", default="", help="override U-Net features, e.g. 4,8 (smoke tests)")
    parser.add_argument("--patch-size", type=int, default=None)
    parser.add_argument("--iterations-per-epoch", type=int, default=None, help="smoke tests: e.g. 2")
    parser.add_argument("--train-slices", default=None, help="training z selection, e.g. 0:3 (smoke tests)")
    parser.add_argument("--test-slices", default=None, help="score only these test slices (smoke tests)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out.parent / f"{args.out.name}.json"
    report = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    rows: dict = report.get("results", {})
    features = [int(f) for f in args.features.split(",")] if args.features else None
    test_raw, test_labels = _test_subset(args, args.out)
    names = [n for n in RUNS if not args.only or n in args.only.split(",")]
    for name in names:
        recipe, overrides = RUNS[name]
        model, note = _model_for(recipe, features)
        training = {"max_minutes": args.minutes, "seed": 0}
        if args.patch_size:
            training["patch_size"] = args.patch_size
        if args.iterations_per_epoch:
            training["iterations_per_epoch"] = args.iterations_per_epoch
        if args.threads:
            training["num_threads"] = args.threads
        config = _merge({
            "data": {"train": {"image": str((args.data / "train_raw.tif").resolve()),
                               "labels": str((args.data / "train_labels.tif").resolve()),
                               **({"slices": args.train_slices} if args.train_slices else {})},
                     "val_fraction": 0.1, "classes": CLASSES},
            "model": model,
            "training": training,
        }, overrides)
        settings = {"recipe": recipe, "config": config, "test": [str(test_raw)]}
        key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        if rows.get(name, {}).get("key") == key:
            print(f"{name}: done already (key {key}), skipped", flush=True)
            continue
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower().replace("+", "plus")).strip("_")
        run_dir = args.out / slug
        config_path = args.out / f"{slug}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        cfg = emseg.load_config(config_path, recipe=recipe) if recipe else emseg.load_config(config_path)
        t0 = time.perf_counter()
        result = emseg.train(cfg, run_dir, overwrite=True, progress=False)
        train_s = time.perf_counter() - t0
        pred = run_dir / "test_prediction.tif"
        t0 = time.perf_counter()
        emseg.predict(run_dir, test_raw, pred, overwrite=True, progress=False)
        predict_s = time.perf_counter() - t0
        scores = emseg.evaluate(pred, test_labels, classes=CLASSES)
        scores.save_json(run_dir / "test_scores.json")
        rows[name] = {
            "key": key, "recipe": recipe, "model": cfg.model.name, "note": note,
            "config": cfg.model_dump(mode="json")["training"] | {"preprocess": cfg.preprocess.model_dump()},
            "train_s": round(train_s, 1), "predict_s": round(predict_s, 1), "epochs": result.epochs,
            "best_epoch": result.best_epoch, "stop_reason": result.stop_reason,
            "checkpoint_metric": result.checkpoint_metric,
            "iou": {c: scores.per_class[c]["iou"] for c in CLASSES},
            "mean_iou": scores.mean_iou, "mean_iou_foreground": scores.mean_iou_foreground,
            "mean_iou_rare": float(np.nanmean([scores.per_class[c]["iou"] for c in RARE])),
        }
        report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                  "minutes": args.minutes, "results": rows}
        summary_path.write_text(json.dumps(report, indent=2, default=str))  # after every run: resumable
        print(f"{name}: mean foreground IoU {scores.mean_iou_foreground:.3f}", flush=True)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "minutes": args.minutes, "results": rows}
    summary_path.write_text(json.dumps(report, indent=2, default=str))
    _print_table(rows)


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def _print_table(rows: dict) -> None:
    print("| run | model | " + " | ".join(CLASSES[1:]) + " | mean fg | rare (PSD, axon) | epochs | stop |")
    print("|" + "---|" * (len(CLASSES) + 5))
    for name, row in rows.items():
        cells = " | ".join(_fmt(row["iou"][c]) for c in CLASSES[1:])
        model = row["model"] + (" *" if row["note"] else "")
        print(f"| {name} | {model} | {cells} | {_fmt(row['mean_iou_foreground'])} | {_fmt(row['mean_iou_rare'])} | "
              f"{row['epochs']} | {row['stop_reason']} |")
    notes = {row["note"] for row in rows.values() if row["note"]}
    for note in sorted(notes):
        print(f"* {note}")


if __name__ == "__main__":
    main()

"""Guay et al.'s 2D-3D + 3x3x3 network and its three ablations against a 2-D U-Net on ISBI 2012.

    PYTHONPATH=src .venv/bin/python benchmarks/hybrid2d3d.py --minutes 20

The contiguous anisotropic ISBI 2012 stack (30 ssTEM sections, 4x4x50 nm;
0 = cell interior, 1 = membrane): every model trains on sections 0-20 and is
validated on 21-23 (best checkpoint by validation mean IoU), then predicts the
held-out sub-stack 24-29 on its own (no context from the training sections)
and is scored there. Models, all at the same wall-clock training budget
(``--minutes`` each, validation included) and thread count:

    unet2d                  2-D U-Net, slice by slice
    hybrid2d3d              2D-3D + 3x3x3, multi-loss (c2d = 0.33), 3-D pyramid
    hybrid2d3d-no3x3x3      ablation: every U-Net convolution 1x3x3 ("2D-3D")
    hybrid2d3d-single-loss  ablation: no 2-D head loss
    hybrid2d3d-no-pyramid   ablation: no 3-D spatial pyramid

Prints a table (membrane IoU / F1, interior IoU, mean IoU, training steps,
training and prediction seconds) and writes benchmarks/results/hybrid2d3d.json.
A smoke test: ``--minutes 0.2 --features 4,8 --patch-2d 64 --patch-3d 3,64,64``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

import emseg
from emseg.config import config_from_dict
from emseg.evaluation import EvaluationResult, confusion_matrix
from emseg.inference import Predictor
from emseg.io import atomic_output
from emseg.models import count_parameters

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "isbi2012-membranes"
CLASSES = ["interior", "membrane"]
TRAIN, VAL, TEST = "0:21", "21:24", (24, 30)

#: Benchmark entry -> (registry name, model options beyond the shared ones).
MODELS = {
    "unet2d": ("unet2d", {}),
    "hybrid2d3d": ("hybrid2d3d", {}),
    "hybrid2d3d-no3x3x3": ("hybrid2d3d", {"use_3x3x3": False}),
    "hybrid2d3d-single-loss": ("hybrid2d3d", {"multi_loss": False}),
    "hybrid2d3d-no-pyramid": ("hybrid2d3d", {"pyramid": False}),
}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _config(args, entry: str) -> dict:
    name, extra = MODELS[entry]
    source = {"image": str((args.data / "train_raw.tif").resolve()), "labels": str((args.data / "train_labels.tif").resolve())}
    model = {"name": name, "features": args.features, **extra}
    three_d = name != "unet2d"
    if three_d and args.features_3d:
        model["features_3d"] = args.features_3d
    return {
        "data": {"train": {**source, "slices": TRAIN}, "val": {**source, "slices": VAL}, "classes": CLASSES},
        "model": model,
        "training": {"max_minutes": args.minutes, "seed": args.seed, "num_threads": args.threads,
                     "iterations_per_epoch": args.iterations_per_epoch,
                     "batch_size": args.batch_3d if three_d else args.batch_2d,
                     "patch_size": args.patch_3d if three_d else [args.patch_2d, args.patch_2d]},
    }


def run_one(args, entry: str, test_raw: np.ndarray, test_labels: np.ndarray) -> dict:
    config = config_from_dict(_config(args, entry))
    run_dir = args.runs / entry
    t0 = time.perf_counter()
    result = emseg.train(config, run_dir, overwrite=True, progress=False)
    train_s = time.perf_counter() - t0
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    predictor = Predictor.from_checkpoint(run_dir)
    t0 = time.perf_counter()
    labels, _ = predictor.predict_volume(test_raw)
    predict_s = time.perf_counter() - t0
    scores = EvaluationResult.from_confusion(confusion_matrix(labels, test_labels, num_classes=2), classes=CLASSES,
                                             background=0)
    return {
        "model": config.model.name, "options": config.model.options, "training": _config(args, entry)["training"],
        "parameters": count_parameters(predictor.model),
        "membrane_iou": scores.per_class["membrane"]["iou"], "membrane_f1": scores.per_class["membrane"]["f1"],
        "interior_iou": scores.per_class["interior"]["iou"], "mean_iou": scores.mean_iou,
        "steps": last["iteration"], "epochs": result.epochs, "best_epoch": result.best_epoch,
        "best_val_mean_iou": result.best_val_mean_iou, "train_s": round(train_s, 1), "predict_s": round(predict_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per model (wall clock)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--features", type=_ints, default=[16, 32, 64, 128], help="U-Net channels per level (all models)")
    parser.add_argument("--features-3d", type=int, default=None, help="channels of the hybrid's 3-D part")
    parser.add_argument("--patch-2d", type=int, default=256)
    parser.add_argument("--patch-3d", type=_ints, default=[5, 160, 160], help="z,y,x")
    parser.add_argument("--batch-2d", type=int, default=8)
    parser.add_argument("--batch-3d", type=int, default=4)
    parser.add_argument("--iterations-per-epoch", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/results/hybrid2d3d"), help="run directories")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/hybrid2d3d.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    entries = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in entries if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    test_raw = tifffile.imread(args.data / "train_raw.tif")[slice(*TEST)]
    test_labels = tifffile.imread(args.data / "train_labels.tif")[slice(*TEST)]
    rows = {}
    for entry in entries:
        rows[entry] = run_one(args, entry, test_raw, test_labels)
        print(f"{entry}: membrane IoU {rows[entry]['membrane_iou']:.3f} after {rows[entry]['steps']} steps", flush=True)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads",
        "data": "isbi2012-membranes: train z 0-20, validation z 21-23, test z 24-29 (predicted as its own sub-stack)",
        "minutes_per_model": args.minutes, "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.json, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2))
    print(f"\nISBI 2012, test sections 24-29, {args.minutes:g} min training per model, {args.threads} threads")
    print("| model | membrane IoU | membrane F1 | interior IoU | mean IoU | steps | train s | predict s |")
    print("|---|---|---|---|---|---|---|---|")
    for entry, r in rows.items():
        print(f"| {entry} | {r['membrane_iou']:.3f} | {r['membrane_f1']:.3f} | {r['interior_iou']:.3f} | "
              f"{r['mean_iou']:.3f} | {r['steps']} | {r['train_s']:.0f} | {r['predict_s']:.0f} |")


if __name__ == "__main__":
    main()

"""Ensembles on EPFL multi-class: base learners, the top-3 weighted ensemble (WAE-Net Table 4), mean and vote.

Every base learner trains on the 27 EPFL training slices minus 3 held out for
validation (z = 6, 13, 20 of train_raw.tif), under the same wall-clock budget
(--minutes) with the same number of torch threads (--threads): an equal CPU
budget per member. The 3 validation slices choose each member's best
checkpoint, the top-3 members and the ensemble weights (simplex grid, step
--step); nothing is tuned on the 5 test slices, which only score.

Full run (intended members once the encoder U-Nets of issue 3 are merged):

    .venv/bin/python benchmarks/ensembles.py --minutes 30 \\
        --models unet2d@0 unet-resnet34@0 unet-vgg19@0 unet-efficientnet-b0@0 unet-seresnet34@0

Default members (registry names that exist on every branch): five unet2d
variants, three seeds of the default U-Net, one with 50 % dropout in the
deepest block and a narrower one:

    .venv/bin/python benchmarks/ensembles.py --minutes 30

A member is MODEL[@SEED][:key=value[:key=value...]] with model options as YAML
values, e.g. "unet2d@4:features=[8,16,32,64,128]". Finished members are not
trained again (rerun to resume). Smoke test (tiny models on a 128x128 crop):

    .venv/bin/python benchmarks/ensembles.py --minutes 0.1 --crop 128 --threads 1 \\
        --set iterations_per_epoch=2 --set batch_size=2 --set patch_size=64 \\
        --models "unet2d@0:features=[4,8]" "unet2d@1:features=[4,8]" "unet2d@2:features=[4,8]" \\
                 "unet2d@3:features=[4,8]" "unet2d@4:features=[4,8]" --out /tmp/ens-smoke

Writes benchmarks/results/ensembles.json (or OUT/ensembles.json for another
--out) and prints a per-class test IoU table for every member and ensemble.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import yaml

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "epfl-multiclass"
CLASSES = ["background", "membrane", "mitochondrion", "mitochondrial_boundary", "vesicle", "psd", "axon"]
VAL_SLICES = [6, 13, 20]
DEFAULT_MODELS = ["unet2d@0", "unet2d@1", "unet2d@2", "unet2d@3:dropout=0.5", "unet2d@4:features=[8,16,32,64,128]"]
RESULTS = Path(__file__).resolve().parent / "results"

logger = logging.getLogger("benchmarks.ensembles")


def parse_member(spec: str) -> tuple[str, str, int, dict]:
    """``"unet2d@3:dropout=0.5"`` -> (run name, model, seed, options)."""
    head, *opts = spec.split(":")
    model, _, seed = head.partition("@")
    options = {}
    for item in opts:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--models {spec!r}: options are key=value, got {item!r}")
        options[key] = yaml.safe_load(value)
    name = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.-]+", "_", spec.replace("@", "-s").replace(":", "-"))).strip("_")
    return name, model, int(seed or 0), options


def prepare_data(data: Path, out: Path, crop: int | None) -> dict[str, Path]:
    files = {k: data / f"{k}.tif" for k in ("train_raw", "train_labels", "test_raw", "test_labels")}
    if crop is None:
        return {k: v.resolve() for k, v in files.items()}
    (out / "data").mkdir(parents=True, exist_ok=True)
    cropped = {}
    for key, path in files.items():
        target = out / "data" / f"{key}_{crop}.tif"
        if not target.exists():
            volume = tifffile.imread(path)
            y0, x0 = (volume.shape[1] - crop) // 2, (volume.shape[2] - crop) // 2
            tifffile.imwrite(target, volume[:, y0:y0 + crop, x0:x0 + crop], photometric="minisblack")
        cropped[key] = target.resolve()
    return cropped


def scores_of(pred: np.ndarray, truth: np.ndarray) -> dict:
    import emseg

    s = emseg.evaluate(pred, truth, classes=CLASSES)
    return {"iou": {c: s.per_class[c]["iou"] for c in CLASSES}, "mean_iou": s.mean_iou,
            "mean_iou_foreground": s.mean_iou_foreground}


def _finite(value):
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock training budget per member")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="members: MODEL[@SEED][:key=value...]")
    parser.add_argument("--top", type=int, default=3, help="members kept for the ensembles (best validation mean IoU)")
    parser.add_argument("--step", type=float, default=0.1, help="weight grid step")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads per member (equal budget)")
    parser.add_argument("--out", type=Path, default=RESULTS / "ensembles", help="run directories")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--crop", type=int, default=None, help="central NxN crop of every slice (smoke tests only)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra training option for every member, e.g. --set batch_size=4 (YAML value)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    import emseg
    from emseg.config import config_from_dict
    from emseg.ensemble import build_ensemble, combine_probabilities, run_scores, train_once
    from emseg.inference import Predictor

    members = [parse_member(spec) for spec in args.models]
    if len({m[0] for m in members}) != len(members):
        raise SystemExit("--models lists the same member twice")
    if len(members) < args.top:
        raise SystemExit(f"--top {args.top} needs at least {args.top} members")
    args.out.mkdir(parents=True, exist_ok=True)
    files = prepare_data(args.data, args.out, args.crop)
    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    depth = tifffile.TiffFile(files["train_raw"]).series[0].shape[0]
    train_z = [z for z in range(depth) if z not in VAL_SLICES]
    test_raw = tifffile.imread(files["test_raw"])
    test_truth = tifffile.imread(files["test_labels"])

    rows: dict[str, dict] = {}
    test_probs: dict[str, np.ndarray] = {}
    for name, model, seed, options in members:
        config = config_from_dict({
            "data": {"train": {"image": str(files["train_raw"]), "labels": str(files["train_labels"]),
                               "slices": ",".join(map(str, train_z))},
                     "val": {"image": str(files["train_raw"]), "labels": str(files["train_labels"]),
                             "slices": ",".join(map(str, VAL_SLICES))},
                     "classes": CLASSES},
            "model": {"name": model, **options},
            "training": {"max_minutes": args.minutes, "seed": seed, "num_threads": args.threads, **extra},
        }, source=f"(member {name})")
        run_dir = args.out / name
        t0 = time.perf_counter()
        status = train_once(config, run_dir, progress=False)
        logger.info("%s: %s in %.0f s", name, status, time.perf_counter() - t0)
        val = run_scores(run_dir)
        t0 = time.perf_counter()
        labels, probs = Predictor.from_checkpoint(run_dir).predict_volume(test_raw, probabilities=True)
        test_probs[name] = probs
        rows[name] = {"kind": "member", "model": model, "seed": seed, "options": options, "status": status,
                      "epochs": val["epochs"], "best_epoch": val["best_epoch"], "train_s": val["elapsed_s"],
                      "predict_s": round(time.perf_counter() - t0, 1), "val_mean_iou": val["val_mean_iou"],
                      "test": scores_of(labels, test_truth)}

    names = [m[0] for m in members]
    ranked = sorted(names, key=lambda n: -(rows[n]["val_mean_iou"] or -1.0))
    top = ranked[:args.top]
    ensembles = {}
    for method, label, chosen in (("weighted", f"weighted-top{args.top}", top), ("mean", f"mean-top{args.top}", top),
                                  ("vote", f"vote-top{args.top}", top), ("mean", "mean-all", names),
                                  ("vote", "vote-all", names)):
        if label.endswith("-all") and len(names) == len(top):
            continue
        result = build_ensemble([args.out / n for n in chosen], args.out / f"ensemble-{label}", method=method,
                                step=args.step, overwrite=True, progress=False)
        weights = {n: dict(zip(result.names, result.weights)).get(n, 0.0) for n in chosen}  # 0: left out
        combined = combine_probabilities([test_probs[n] for n in result.names], method=method,
                                         weights=result.weights)
        entry = {"kind": "ensemble", "method": method, "members": chosen, "weights": weights,
                 "val_mean_iou": result.report[method]["val_mean_iou"],
                 "test": scores_of(combined.argmax(0).astype(np.uint8), test_truth),
                 "model": str(result.model_path)}
        if method == "weighted":
            # End to end: the artefact through emseg.predict must give the same labels as the cached combination.
            pred_path = args.out / f"ensemble-{label}" / "test_prediction.tif"
            emseg.predict(result.model_path, files["test_raw"], pred_path, overwrite=True, progress=False)
            same = float((tifffile.imread(pred_path) == combined.argmax(0)).mean())
            entry["artefact_agreement"] = same
            logger.info("%s: emseg.predict of the artefact agrees with the cached combination on %.6f of voxels",
                        label, same)
        rows[label] = entry
        ensembles[label] = entry

    weighted = rows[f"weighted-top{args.top}"]
    best_member = max(top, key=lambda n: rows[n]["test"]["mean_iou"])
    best_overall = max(names, key=lambda n: rows[n]["test"]["mean_iou"])
    verdict = {
        "best_of_all_members": best_overall,
        "best_of_all_members_test_mean_iou": rows[best_overall]["test"]["mean_iou"],
        "weighted_test_mean_iou": weighted["test"]["mean_iou"],
        "best_member": best_member,
        "best_member_test_mean_iou": rows[best_member]["test"]["mean_iou"],
        "weighted_beats_best_member": weighted["test"]["mean_iou"] > rows[best_member]["test"]["mean_iou"],
    }
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": args.threads, "minutes_per_member": args.minutes, "crop": args.crop,
        "training_slices": train_z, "validation_slices": VAL_SLICES, "top": args.top, "step": args.step,
        "extra_training_options": extra, "results": rows, "verdict": verdict,
    }
    path = RESULTS / "ensembles.json" if args.out.resolve() == (RESULTS / "ensembles").resolve() \
        else args.out / "ensembles.json"
    path.write_text(json.dumps(_finite(report), indent=2, allow_nan=False))

    header = "| model | weights | " + " | ".join(CLASSES) + " | mean IoU | mean fg | val mean IoU |"
    print(header)
    print("|" + "---|" * (len(CLASSES) + 5))
    for name, row in rows.items():
        weights = " ".join(f"{w:.2f}" for w in row["weights"].values()) if row["kind"] == "ensemble" else "-"
        cells = " | ".join("n/a" if row["test"]["iou"][c] is None or np.isnan(row["test"]["iou"][c])
                           else f"{row['test']['iou'][c]:.3f}" for c in CLASSES)
        print(f"| {name} | {weights} | {cells} | {row['test']['mean_iou']:.3f} | "
              f"{row['test']['mean_iou_foreground']:.3f} | {row['val_mean_iou']:.3f} |")
    print(f"weighted top-{args.top} test mean IoU {verdict['weighted_test_mean_iou']:.4f} vs best member "
          f"({best_member}) {verdict['best_member_test_mean_iou']:.4f}: "
          f"{'beats' if verdict['weighted_beats_best_member'] else 'does NOT beat'} it")
    print(f"results: {path}")


if __name__ == "__main__":
    main()

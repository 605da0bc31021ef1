"""Lucchi++ mitochondria: emseg's default against a plain MONAI BasicUNet, same budget, same run.

Trains on the Lucchi++ training volume (165 x 768 x 1024; the last 15 slices
held out for checkpoint selection), predicts the whole test volume with the
blockwise engine and scores the mitochondria against the test labels:
foreground IoU (Jaccard of class 1), Dice, and V_Rand / V_Info of the 3-D
connected components (the mito instances).

Rows (``--rows``, in this order, one after another in the same process):

* ``default``: ``emseg train`` with the default configuration (only data,
  classes, ``max_minutes`` and threads set), the route chosen by the probe;
* ``default+post``: the same prediction after a 3 x 3 x 3 median filter and
  removal of components below ``--min-size`` voxels (``emseg.inference.postprocess_labels``,
  as ``emseg predict --median 3 --min-size N``; costs no training);
* ``default+tta``: the same model predicted with test-time augmentation (8x);
* ``2.5d``: the default with ``model.context_slices: 3``;
* ``ensemble``: ``--members`` seeds of ``minutes / members`` each, mean of probabilities;
* ``basicunet``: MONAI ``BasicUNet`` (features 32, 32, 64, 128, 256, 32), Dice + CE,
  Adam 1e-3, batch 8 of 256 x 256 random patches with flips, fp32, the same
  minutes and threads, a plain loop (no validation, last weights), predicted by
  the same blockwise engine (``plain_unet.py``, shared with ``side_by_side.py``).

The volumes come from ``../shared/tools/em-volumes lucchipp`` (see
../shared/data/README.md); they stay out of the repository.

    python benchmarks/lucchi.py --data /work/data/lucchipp --minutes 10 --rows default,default+post,basicunet

Writes ``OUT/results.json`` (one entry per row, appended as rows finish) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

import emseg
from emseg.config import config_from_dict
from emseg.evaluation import class_rand_info_scores, confusion_matrix
from emseg.inference import Predictor, postprocess_labels
from plain_unet import predict_labels, train_basicunet

CLASSES = ["background", "mitochondrion"]
PUBLISHED = [
    ("PyTorch Connectomics 3-D U-Net (Lucchi labels)", 0.892),
    ("Casser et al. 2020 (Lucchi++)", 0.90),
    ("Xiao et al. 2018", 0.90),
]


def machine() -> dict:
    flags = open("/proc/cpuinfo").read()
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "?")
    kinds = sorted({f for f in ("avx512_bf16", "amx_bf16") if f in flags})
    return {"cpu": model, "bf16_flags": kinds, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "load": os.getloadavg()}


def score(pred: np.ndarray, truth: np.ndarray, *, per_slice: bool = False) -> dict:
    cm = confusion_matrix(pred, truth, num_classes=2)
    tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
    out = {"iou": float(tp / (tp + fp + fn)), "dice": float(2 * tp / (2 * tp + fp + fn))}
    t0 = time.perf_counter()
    ri = class_rand_info_scores(pred, truth, classes=CLASSES, background=0, per_slice=per_slice)["mitochondrion"]
    out.update({k: float(v) for k, v in ri.items()})
    out["instance_scoring_s"] = round(time.perf_counter() - t0, 1)
    return out


#: ``--extra-training`` (JSON) merged into the training section of the emseg rows (smoke tests).
EXTRA_TRAINING: dict = {}


def write_config(path: Path, data: Path, minutes: float, threads: int, *, extra_model: dict | None = None,
                 seed: int = 0) -> Path:
    import yaml

    cfg = {
        "data": {"train": {"image": str(data / "lucchipp_train_raw.tif"), "labels": str(data / "lucchipp_train_mito.tif"),
                           "slices": "0:150"},
                 "val": {"image": str(data / "lucchipp_train_raw.tif"), "labels": str(data / "lucchipp_train_mito.tif"),
                         "slices": "150:165"},
                 "classes": CLASSES},
        "model": {"name": "unet2d", **(extra_model or {})},
        "training": {"max_minutes": minutes, "num_threads": threads, "seed": seed, "val_max_slices": 5,
                     **EXTRA_TRAINING},
    }
    config_from_dict(cfg, source=str(path))  # fail early on a bad config
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


#: The test image predicted: the whole test volume, or the ``--test-slices`` of it (written once into OUT).
TEST_IMAGE: list[Path] = []


def predict_volume(model, data: Path, out: Path, *, threads: int, tta: bool = False) -> tuple[np.ndarray, float]:
    return predict_labels(model, TEST_IMAGE[0], out, threads=threads, tta=tta)


def train_lucchi_basicunet(data: Path, minutes: float, threads: int, seed: int = 0) -> tuple[Predictor, dict]:
    """The plain reference (plain_unet.train_basicunet) on training slices 0-149."""
    raw = tifffile.imread(data / "lucchipp_train_raw.tif")[:150]
    lab = tifffile.imread(data / "lucchipp_train_mito.tif")[:150]
    return train_basicunet(raw, lab, classes=CLASSES, minutes=minutes, threads=threads, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/data/lucchipp"))
    parser.add_argument("--out", type=Path, default=Path("/work/data/lucchi-runs"))
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="default,default+post,basicunet")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--min-size", type=int, default=1000,
                        help="post-processing: smallest kept component (voxels; a tenth of it in pixels per slice "
                             "with --test-slices)")
    parser.add_argument("--test-slices", default=None,
                        help="predict and score only these test slices (start:stop:step, e.g. 0:165:8); V_Rand/V_Info "
                             "then per slice (2-D components)")
    parser.add_argument("--extra-training", default="{}", help="JSON merged into training: (smoke tests)")
    args = parser.parse_args()
    EXTRA_TRAINING.update(json.loads(args.extra_training))
    args.out.mkdir(parents=True, exist_ok=True)
    truth = tifffile.imread(args.data / "lucchipp_test_mito.tif").astype(np.uint8)
    TEST_IMAGE.append(args.data / "lucchipp_test_raw.tif")
    per_slice = args.test_slices is not None
    if per_slice and "2.5d" in args.rows.split(",") and args.test_slices.count(":") == 2 \
            and args.test_slices.rsplit(":", 1)[1] not in ("", "1"):
        raise SystemExit(f"--rows 2.5d with --test-slices {args.test_slices}: a 2.5-D model takes its context "
                         "from the neighbouring slices, which a strided subset does not have (docs/BENCHMARKS.md: "
                         "a 2.5-D row scored on every 8th slice was wrong by far); use contiguous test slices (step 1) or "
                         "leave --test-slices out")
    if per_slice:
        pick = slice(*(int(v) if v else None for v in args.test_slices.split(":")))
        truth = truth[pick]
        subset = args.out / f"test_raw_{args.test_slices.replace(':', '_')}.tif"
        tifffile.imwrite(subset, tifffile.imread(TEST_IMAGE[0])[pick])
        TEST_IMAGE[0] = subset
    results_path = args.out / "results.json"
    results = {"machine": machine(), "command": " ".join(["python", "benchmarks/lucchi.py", *os.sys.argv[1:]]),
               "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=Path(__file__).parent).stdout.strip(),
               "published": PUBLISHED, "rows": []}
    cache: dict[str, np.ndarray] = {}

    def record(name: str, labels: np.ndarray, **info) -> None:
        row = {"row": name, "minutes": args.minutes, "threads": args.threads, **score(labels, truth, per_slice=per_slice),
               "test_slices": args.test_slices or "all", **info,
               "load_after": os.getloadavg()}
        results["rows"].append(row)
        results_path.write_text(json.dumps(results, indent=2))
        print(json.dumps(row), flush=True)

    tag = f"{args.minutes:g}min"
    for name in args.rows.split(","):
        t0 = time.perf_counter()
        if name in ("default", "2.5d"):
            extra = {"context_slices": 3} if name == "2.5d" else None
            run = args.out / f"{name}-{tag}"
            cfg = write_config(args.out / f"{name}-{tag}.yaml", args.data, args.minutes, args.threads, extra_model=extra)
            result = emseg.train(cfg, run, overwrite=True, progress=False)
            summary = json.loads((run / "summary.json").read_text())
            labels, pred_s = predict_volume(run / "model.pt", args.data, args.out / f"{name}-{tag}.zarr",
                                            threads=args.threads)
            cache[name] = labels
            record(name, labels, epochs=result.epochs, best_epoch=result.best_epoch,
                   val_iou=result.best_val_mean_iou, route=summary.get("route", {}).get("name"),
                   train_s=round(result.elapsed_s, 1), predict_s=round(pred_s, 1))
        elif name == "default+post":
            labels = cache.get("default")
            if labels is None:
                raise SystemExit("row default+post needs the row default before it")
            t1 = time.perf_counter()
            min_size = args.min_size // 10 if per_slice else args.min_size  # pixels of a 2-D component
            post = postprocess_labels(labels, median=3, min_size=min_size, per_slice=per_slice)
            record(name, post, postprocess_s=round(time.perf_counter() - t1, 1), min_size=min_size)
        elif name == "default+tta":
            run = args.out / f"default-{tag}"
            labels, pred_s = predict_volume(run / "model.pt", args.data, args.out / f"default-tta-{tag}.zarr",
                                            threads=args.threads, tta=True)
            record(name, labels, predict_s=round(pred_s, 1))
        elif name == "ensemble":
            members = []
            for seed in range(args.members):
                run = args.out / f"ensemble-{tag}" / f"seed-{seed}"
                cfg = write_config(args.out / f"ensemble-{tag}-{seed}.yaml", args.data, args.minutes / args.members,
                                   args.threads, seed=seed)
                emseg.train(cfg, run, overwrite=True, progress=False)
                members.append(run / "model.pt")
            from emseg.inference import EnsemblePredictor, load_predictor

            ens = EnsemblePredictor([load_predictor(m) for m in members])
            labels, pred_s = predict_volume(ens, args.data, args.out / f"ensemble-{tag}.zarr", threads=args.threads)
            record(name, labels, members=args.members, predict_s=round(pred_s, 1))
        elif name == "basicunet":
            predictor, info = train_lucchi_basicunet(args.data, args.minutes, args.threads)
            labels, pred_s = predict_volume(predictor, args.data, args.out / f"basicunet-{tag}.zarr",
                                            threads=args.threads)
            record(name, labels, **info, predict_s=round(pred_s, 1))
        else:
            raise SystemExit(f"unknown row {name!r}: default, default+post, default+tta, 2.5d, ensemble, basicunet")
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print("\n| row | minutes | foreground IoU | Dice | V_Rand | V_Info |")
    print("|---|---|---|---|---|---|")
    for row in results["rows"]:
        print(f"| {row['row']} | {row['minutes']:g} | {row['iou']:.3f} | {row['dice']:.3f} | "
              f"{row.get('v_rand', float('nan')):.3f} | {row.get('v_info', float('nan')):.3f} |")
    for name, value in PUBLISHED:
        print(f"| {name} (published) | GPU | {value:.3f} | | | |")


if __name__ == "__main__":
    main()

"""Post-processing of predicted labels on the EPFL multi-class test slices: IoU with and without it.

Predicts the 5 EPFL test slices (``test_raw.tif``; not contiguous, so 2-D post-processing per slice,
the default of ``emseg predict``) once with ``emseg.inference.predict`` and 1 torch thread, then
applies ``emseg.inference.postprocess_labels`` with each setting (what ``emseg predict --median M
--min-size N`` does) and scores every class (IoU) and the mean foreground IoU against
``test_labels.tif``.

    python benchmarks/postprocess.py --model RUN_DIR [--model RUN_DIR2] \\
        --settings none,m3,s64,m3s64,m5s256 --out benchmarks/results/postprocess.json

A setting is ``none`` or ``m<median>`` and/or ``s<min_size>`` (``m3s64``: --median 3 --min-size 64).
Another image: ``--image``/``--labels`` (a contiguous stack, e.g. Lucchi++ test slices ``--z 0:16``)
with ``--modes 2d,3d`` to compare per-slice and 3-D post-processing (``--post-3d``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

import tifffile
import torch

from emseg.evaluation import evaluate
from emseg.inference import load_predictor, postprocess_labels, predict

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "epfl-multiclass"


def machine() -> dict:
    text = open("/proc/cpuinfo").read()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    return {"cpu": model, "bf16_flags": sorted({f for f in ("avx512_bf16", "amx_bf16") if f in text}),
            "cores": os.cpu_count(), "torch": torch.__version__}


def parse(setting: str) -> dict:
    if setting == "none":
        return {}
    match = re.fullmatch(r"(?:m(\d+))?(?:s(\d+))?", setting)
    if not match or not any(match.groups()):
        raise SystemExit(f"--settings: {setting!r} is not none, m<size>, s<voxels> or m<size>s<voxels>")
    median, min_size = match.groups()
    return {"median": int(median) if median else None, "min_size": int(min_size) if min_size else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="run directory or model.pt (repeatable)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--settings", default="none,m3,s64,m3s64,m5s256")
    parser.add_argument("--image", type=Path, default=None, help="default: DATA/test_raw.tif")
    parser.add_argument("--labels", type=Path, default=None, help="default: DATA/test_labels.tif")
    parser.add_argument("--z", default=None, help="only these slices, start:stop")
    parser.add_argument("--modes", default="2d", help="2d (per slice), 3d (--post-3d) or 2d,3d")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = args.image or args.data / "test_raw.tif"
    truth = tifffile.imread(args.labels or args.data / "test_labels.tif")
    pick = slice(*(int(v) for v in args.z.split(":"))) if args.z else slice(None)
    truth = truth[pick]
    work = tempfile.TemporaryDirectory()
    if args.z:
        tifffile.imwrite(Path(work.name) / "image.tif", tifffile.imread(image)[pick])
        image = Path(work.name) / "image.tif"
    results = {"machine": machine(), "load_before": os.getloadavg(),
               "image": str(args.image or args.data / "test_raw.tif"), "z": args.z,
               "command": " ".join(["python", "benchmarks/postprocess.py", *os.sys.argv[1:]]), "rows": []}
    for model in args.model:
        classes = load_predictor(model).classes
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            out = predict(model, image, Path(tmp) / "labels.tif", progress=False)
            predict_s = time.perf_counter() - t0
            labels = tifffile.imread(out)
        for mode, setting in [(m, s) for s in args.settings.split(",") for m in args.modes.split(",")]:
            options = parse(setting)
            if not options and mode != args.modes.split(",")[0]:
                continue  # "none" once
            t1 = time.perf_counter()
            post = postprocess_labels(labels, per_slice=mode == "2d", **options) if options else labels
            post_s = time.perf_counter() - t1
            scores = evaluate(post, truth, classes=classes)
            row = {"model": str(model), "setting": setting, "mode": mode if options else "-", **options,
                   "mean_iou_foreground": round(scores.mean_iou_foreground, 4),
                   "per_class_iou": {k: round(v["iou"], 4) for k, v in scores.per_class.items()},
                   "changed_pixels": int((post != labels).sum()), "postprocess_s": round(post_s, 2),
                   "predict_s": round(predict_s, 1), "load": os.getloadavg()}
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

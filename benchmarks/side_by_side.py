"""EPFL multi-class and ISBI 2012: emseg's default against a plain MONAI BasicUNet, same budget, same run.

The two arms train **at the same time** as two processes with one torch thread
each, so both see the same machine load (sampled every 30 s and recorded):

* ``default``: ``emseg.train`` with only data, classes, ``max_minutes`` and
  ``num_threads`` set (the route and the batch chosen by emseg);
* ``basicunet``: :func:`plain_unet.train_basicunet` (BasicUNet 32..256, Dice + CE,
  Adam 1e-3, batch 8 x 256^2, fp32, last weights) on the same training slices.

Both are predicted by the blockwise engine (one thread). Data sets:

* ``epfl``: train on the 27 EPFL training slices, score the 5 test slices per
  class (IoU) and the mean foreground IoU;
* ``isbi``: train on sections 0-23 of the ISBI 2012 training stack, score sections
  24-29: membrane IoU and the ISBI V_Rand / V_Info (thinned, ``membrane_scores``).

The scoring step (``--score``, run by the launcher at the end, rerunnable) adds
the rows ``default+post`` (``emseg.inference.postprocess_labels`` with
``--median`` / ``--min-size``, 2-D per slice) and ``default+tta`` (the default
model predicted with flip TTA), which cost no training.

    python benchmarks/side_by_side.py --dataset epfl --minutes 10 --out /work/data/i22-epfl

Writes ``OUT/results.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from plain_unet import predict_labels, train_basicunet

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SETS = {
    "epfl": {"folder": "epfl-multiclass", "train": slice(None), "test": "test",
             "classes": ["background", "membrane", "mitochondrion", "mitochondrial_boundary", "vesicle", "psd",
                         "axon"]},
    "isbi": {"folder": "isbi2012-membranes", "train": slice(0, 24), "test": slice(24, 30),
             "classes": ["interior", "membrane"]},
}


def _paths(dataset: str, data: Path, out: Path) -> tuple[Path, Path, Path, Path, np.ndarray]:
    """Train image, train labels, test image, and the test truth (the ISBI test sections written into OUT)."""
    spec, folder = SETS[dataset], data / SETS[dataset]["folder"]
    if spec["test"] == "test":
        return (folder / "train_raw.tif", folder / "train_labels.tif", folder / "test_raw.tif",
                folder / "test_labels.tif", tifffile.imread(folder / "test_labels.tif"))
    test_image = out / "test_raw.tif"
    if not test_image.exists():
        tifffile.imwrite(test_image, tifffile.imread(folder / "train_raw.tif")[spec["test"]])
    truth = tifffile.imread(folder / "train_labels.tif")[spec["test"]]
    return folder / "train_raw.tif", folder / "train_labels.tif", test_image, folder / "train_labels.tif", truth


def run_arm(args: argparse.Namespace) -> None:
    import torch
    import yaml

    import emseg

    spec = SETS[args.dataset]
    train_image, train_labels, test_image, _, _ = _paths(args.dataset, args.data, args.out)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.arm == "default":
        train = {"image": str(train_image.resolve()), "labels": str(train_labels.resolve())}
        if spec["train"] != slice(None):
            train["slices"] = f"{spec['train'].start}:{spec['train'].stop}"
        cfg = {"data": {"train": train, "classes": spec["classes"]},
               "training": {"max_minutes": args.minutes, "num_threads": args.threads}}
        cfg_path = args.out / "default.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        run = args.out / "default-run"
        result = emseg.train(cfg_path, run, overwrite=True, progress=False)
        summary = json.loads((run / "summary.json").read_text())
        info = {"epochs": result.epochs, "best_epoch": result.best_epoch, "train_s": round(result.elapsed_s, 1),
                "steps": _steps(run), "budget": summary.get("budget"),
                "route": summary.get("route", {}).get("name"), "summary": summary}
        model = run / "model.pt"
    else:
        raw = tifffile.imread(train_image)[spec["train"]]
        lab = tifffile.imread(train_labels)[spec["train"]]
        model, info = train_basicunet(raw, lab, classes=spec["classes"], minutes=args.minutes, threads=args.threads)
    labels, predict_s = predict_labels(model, test_image, args.out / f"{args.arm}.zarr", threads=args.threads)
    tifffile.imwrite(args.out / f"{args.arm}_test.tif", labels.astype(np.uint8))
    info.update(predict_s=round(predict_s, 1), wall_s=round(time.perf_counter() - t0, 1))
    (args.out / f"{args.arm}.json").write_text(json.dumps(info, indent=2, default=str))


def _steps(run: Path) -> int | None:
    """Optimiser steps of an emseg run: the iteration of its last metrics line."""
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    return json.loads(lines[-1]).get("iteration") if lines else None


def score(dataset: str, pred: np.ndarray, truth: np.ndarray) -> dict:
    from emseg.evaluation import evaluate, membrane_scores

    classes = SETS[dataset]["classes"]
    result = evaluate(pred, truth, classes=classes)
    row = {"iou": {c: result.per_class[c]["iou"] for c in classes}, "mean_iou_foreground": result.mean_iou_foreground}
    if dataset == "isbi":
        row.update({k: float(v) for k, v in membrane_scores(pred == 1, truth == 1).items()})
    return row


def score_all(args: argparse.Namespace, extra: dict) -> None:
    from emseg.inference import postprocess_labels

    _, _, test_image, _, truth = _paths(args.dataset, args.data, args.out)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update(extra)
    rows = {}
    for arm in ("default", "basicunet"):
        if (args.out / f"{arm}.json").exists():
            info = json.loads((args.out / f"{arm}.json").read_text())
            summary = info.pop("summary", None)
            if arm == "default" and info.get("steps") is None:  # arms written before _steps
                info.update(steps=_steps(args.out / "default-run"), budget=(summary or {}).get("budget"))
            rows[arm] = {**info, **score(args.dataset, tifffile.imread(args.out / f"{arm}_test.tif"), truth)}
    if "default" in rows:
        labels = tifffile.imread(args.out / "default_test.tif")
        t0 = time.perf_counter()
        post = postprocess_labels(labels, median=args.median, min_size=args.min_size, per_slice=True)
        rows["default+post"] = {"median": args.median, "min_size": args.min_size,
                                "postprocess_s": round(time.perf_counter() - t0, 1), **score(args.dataset, post, truth)}
        if args.tta:
            tta, predict_s = predict_labels(args.out / "default-run" / "model.pt", test_image,
                                            args.out / "default-tta.zarr", threads=args.threads, tta=True)
            rows["default+tta"] = {"predict_s": round(predict_s, 1), **score(args.dataset, tta, truth)}
    results["rows"] = rows
    results_path.write_text(json.dumps(results, indent=2))
    classes = SETS[args.dataset]["classes"][1:]
    extra_cols = ["v_rand", "v_info"] if args.dataset == "isbi" else []
    print("| row | steps | " + " | ".join(classes + ["mean fg"] + extra_cols) + " |")
    for name, row in rows.items():
        cells = [f"{row['iou'][c]:.3f}" for c in classes] + [f"{row['mean_iou_foreground']:.3f}"]
        cells += [f"{row.get(k, float('nan')):.3f}" for k in extra_cols]
        print(f"| {name} | {row.get('steps', '')} | " + " | ".join(cells) + " |")


def launch(args: argparse.Namespace) -> None:
    """Both arms at the same time, one process each; the load sampled every 30 s."""
    flags = open("/proc/cpuinfo").read()
    cpu = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "?")
    extra = {"command": " ".join(["python", "benchmarks/side_by_side.py", *sys.argv[1:]]),
             "cpu": cpu, "bf16_flags": sorted({f for f in ("avx512_bf16", "amx_bf16") if f in flags}),
             "minutes": args.minutes, "threads_per_arm": args.threads,
             "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
             "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                   cwd=Path(__file__).parent).stdout.strip()}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    procs = {}
    for arm in ("default", "basicunet"):
        log = open(args.out / f"{arm}.log", "w")
        procs[arm] = subprocess.Popen([sys.executable, __file__, "--dataset", args.dataset, "--data", str(args.data),
                                       "--out", str(args.out), "--minutes", str(args.minutes), "--threads",
                                       str(args.threads), "--arm", arm], stdout=log, stderr=subprocess.STDOUT, env=env)
    load = []
    while any(p.poll() is None for p in procs.values()):
        load.append([round(time.time()), *os.getloadavg()])
        time.sleep(30)
    extra.update(load=load, exit_codes={a: p.returncode for a, p in procs.items()},
                 finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    (args.out / "results.json").write_text(json.dumps(extra, indent=2))
    score_all(args, extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(SETS), required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each arm")
    parser.add_argument("--arm", choices=["default", "basicunet"], help="(internal) train and predict one arm")
    parser.add_argument("--score", action="store_true", help="only (re)score the finished arms")
    parser.add_argument("--median", type=int, default=3)
    parser.add_argument("--min-size", type=int, default=100)
    parser.add_argument("--tta", action="store_true", help="scoring adds the default+tta row")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.arm:
        run_arm(args)
    elif args.score:
        score_all(args, {})
    else:
        launch(args)


if __name__ == "__main__":
    main()

"""Train on the 27 EPFL training slices, evaluate on the 5 test slices.

Reproduces the per-class IoU table of docs/BENCHMARKS.md:

    .venv/bin/python benchmarks/epfl_multiclass.py --minutes 30 --models unet2d,random-forest

Each model is trained through the public API (`emseg.train`, `emseg.predict`,
`emseg.evaluate`) with the default configuration plus the budget; the random
forest has no time budget (it is fitted once). With ``--set calibrate=true``
networks are scored with the logit offsets calibrated on the validation slices
after training and, as a row of their own, without them (``--no-calibration``).
``--set KEY=VALUE`` changes a ``training`` option and ``--model-option KEY=VALUE`` a
``model`` option (e.g. ``--model-option "features=[16,32,64,128,256,512]"``) for
ablations. Writes epfl_multiclass.json in the parent folder of ``--out``
(benchmarks/results/ by default; an ``--out`` elsewhere leaves the recorded
rows untouched) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import yaml

import emseg

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "epfl-multiclass"
CLASSES = ["background", "membrane", "mitochondrion", "mitochondrial_boundary", "vesicle", "psd", "axon"]


def _key_values(parser: argparse.ArgumentParser, flag: str, items: list[str]) -> dict:
    """``["a=1", "b=[2, 3]"]`` -> ``{"a": 1, "b": [2, 3]}`` (values parsed as YAML)."""
    bad = [item for item in items if "=" not in item]
    if bad:
        parser.error(f"{flag} expects KEY=VALUE, got {bad[0]!r}")
    return {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per neural network")
    parser.add_argument("--models", default="unet2d,random-forest")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/epfl_multiclass"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--tag", default="", help="suffix for the run names, e.g. '-weighted'")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra training option, e.g. --set class_weights=auto (YAML value)")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="model option, e.g. --model-option features=[16,32,64,128,256,512] (YAML value)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out.parent / "epfl_multiclass.json"
    rows = json.loads(summary_path.read_text())["results"] if summary_path.exists() else {}
    extra = _key_values(parser, "--set", args.set)
    model_options = _key_values(parser, "--model-option", args.model_option)
    for model_name in args.models.split(","):
        name = model_name + args.tag
        run_dir = args.out / name
        config = {
            "data": {
                "train": {"image": str((args.data / "train_raw.tif").resolve()),
                          "labels": str((args.data / "train_labels.tif").resolve())},
                "val_fraction": 0.1,
                "classes": CLASSES,
            },
            "model": {"name": model_name, **model_options},
            "training": {"max_minutes": args.minutes, "seed": 0, **extra},
        }
        config_path = args.out / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        t0 = time.perf_counter()
        result = emseg.train(config_path, run_dir, overwrite=True, progress=False)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = run_dir / "test_prediction.tif"
        emseg.predict(run_dir, args.data / "test_raw.tif", pred, overwrite=True, progress=False)
        predict_s = time.perf_counter() - t0
        scores = emseg.evaluate(pred, args.data / "test_labels.tif", classes=CLASSES)
        scores.save_json(run_dir / "test_scores.json")
        calibration = json.loads((run_dir / "summary.json").read_text()).get("calibration")
        if calibration is not None:  # the same network without its logit offsets, as its own row
            emseg.predict(run_dir, args.data / "test_raw.tif", run_dir / "test_prediction_uncalibrated.tif",
                          overwrite=True, progress=False, calibrated=False)
            plain = emseg.evaluate(run_dir / "test_prediction_uncalibrated.tif", args.data / "test_labels.tif",
                                   classes=CLASSES)
            rows[name + " --no-calibration"] = {
                "iou": {c: plain.per_class[c]["iou"] for c in CLASSES}, "mean_iou": plain.mean_iou,
                "mean_iou_foreground": plain.mean_iou_foreground, "train_s": round(train_s, 1),
                "precision": {c: plain.per_class[c]["precision"] for c in CLASSES},
                "recall": {c: plain.per_class[c]["recall"] for c in CLASSES}}
        if model_name != "random-forest":  # flip test-time augmentation, reported as its own row
            emseg.predict(run_dir, args.data / "test_raw.tif", run_dir / "test_prediction_tta.tif", overwrite=True,
                          progress=False, tta=True)
            tta = emseg.evaluate(run_dir / "test_prediction_tta.tif", args.data / "test_labels.tif", classes=CLASSES)
            rows[name + " --tta"] = {"iou": {c: tta.per_class[c]["iou"] for c in CLASSES}, "mean_iou": tta.mean_iou,
                                     "mean_iou_foreground": tta.mean_iou_foreground, "train_s": round(train_s, 1)}
        rows[name] = {"config": {**config["training"], **({"model_options": model_options} if model_options else {})},
            "train_s": round(train_s, 1), "predict_s": round(predict_s, 1), "epochs": result.epochs,
            "best_epoch": result.best_epoch,
            "iou": {c: scores.per_class[c]["iou"] for c in CLASSES},
            "precision": {c: scores.per_class[c]["precision"] for c in CLASSES},
            "recall": {c: scores.per_class[c]["recall"] for c in CLASSES},
            "mean_iou": scores.mean_iou, "mean_iou_foreground": scores.mean_iou_foreground,
            "calibration": calibration, "confusion": scores.confusion.tolist(),
        }
        print(f"{name}: mean foreground IoU {scores.mean_iou_foreground:.3f}", flush=True)
    report = {"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
              "minutes": args.minutes, "results": rows}
    summary_path.write_text(json.dumps(report, indent=2))
    header = "| model | " + " | ".join(CLASSES[1:]) + " | mean fg | train s |"
    print(header)
    print("|" + "---|" * (len(CLASSES) + 2))
    for name, row in rows.items():
        cells = " | ".join(f"{row['iou'][c]:.3f}" for c in CLASSES[1:])
        print(f"| {name} | {cells} | {row['mean_iou_foreground']:.3f} | {row['train_s']:.0f} |")


if __name__ == "__main__":
    main()

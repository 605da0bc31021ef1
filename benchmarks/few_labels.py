"""Few labels: what pretraining, semi-supervised training and 4S propagation buy with 2-3 labelled slices.

    PYTHONPATH=src .venv/bin/python benchmarks/few_labels.py --minutes 4 --seeds 0,1,2       # the full run (~3 h)
    PYTHONPATH=src .venv/bin/python benchmarks/few_labels.py --minutes 1 --seeds 0,1         # the reduced run

Every route gets the same wall-clock budget (``--minutes``); pretraining counts against the route that
uses it (``--pretrain-share`` of the budget, the rest fine-tuning), 4S splits it over its rounds.  Routes
run interleaved (all routes of seed 0, then seed 1, ...) so that machine load hits them alike; the load
average before each run is recorded.  No labelled validation data is used (the few-label setting): each run
keeps the epoch of lowest training loss.

* ISBI 2012 (``isbi2012-membranes``): labelled training sections 5 and 15; unlabelled: the raw images of the
  30 training and the 30 test sections; scored on sections 24-29 (membrane IoU, thinned V_Rand).
  4S propagates from 5 and 15 over sections 0-23 (``--step`` sections per side per round).
* EPFL multi-class: labelled training slices 0, 12 and 24 of the 27 (z = 0, 61, 161 of the EPFL volume);
  unlabelled: the raw images of all 32 slices (27 training + 5 test); scored on the 5 test slices
  (per-class and mean foreground IoU).
* References (what labelling every unlabelled training slice would give at the same budget, the ceiling of
  what the unlabelled slices can bring): ``reference-27`` (EPFL, all 27 training slices) and ``reference-24``
  (ISBI, sections 0-23 all labelled).

Routes: supervised (random init), mim+ft, moco+ft (pretrained + fine-tuned), mean_teacher, pseudo_label,
pseudo_balanced (``balance: true``), pseudo_weighted (``loss: supervised``: the pseudo-labels learned with the
supervised loss, class-weighted cross-entropy + Dice, instead of plain cross-entropy), pseudo_light (one
unlabelled patch per step instead of a batch: a cheaper step), pseudo_cutmix and mean_teacher_cutmix
(``cutmix: true``: the student's unlabelled patches mixed in pairs, a box of one pasted into the other)
(semi-supervised), 4s (ISBI only), mim+pseudo_label (the combination).  Writes
benchmarks/results/few_labels.json (resumable: finished runs with the same settings are skipped) and prints a
markdown table of mean +- std over seeds.
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
import yaml

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
EPFL_CLASSES = ["background", "membrane", "mitochondrion", "mitochondrial_boundary", "vesicle", "psd", "axon"]
ROUTES = ["supervised", "mim+ft", "moco+ft", "mean_teacher", "pseudo_label", "pseudo_balanced", "pseudo_weighted",
          "pseudo_light", "pseudo_cutmix", "mean_teacher_cutmix", "4s", "mim+pseudo_label"]
REFERENCES = {"isbi": ("reference-24", "0:24"), "epfl": ("reference-27", None)}  # route, all training slices
SEMI_ROUTES = ("mean_teacher", "pseudo_label", "pseudo_balanced", "pseudo_weighted", "pseudo_light", "_cutmix")
ALL_ROUTES = ROUTES + [route for route, _ in REFERENCES.values()]


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.*)", text)
        flags = sorted(set(re.findall(r"amx_bf16|avx512_bf16", text)))
        return f"{model.group(1) if model else platform.processor()} ({', '.join(flags) or 'no native bf16'})"
    except OSError:
        return platform.processor()


def _datasets(args) -> dict[str, dict]:
    data = Path(args.data).resolve()  # configs written in run folders: absolute paths
    ISBI, EPFL = data / "isbi2012-membranes", data / "epfl-multiclass"  # noqa: N806
    feats = [int(f) for f in args.features.split(",")]
    common_model = {"name": "unet2d", "features": feats}
    training = {"epochs": 100000, "iterations_per_epoch": args.iterations_per_epoch, "batch_size": args.batch_size,
                "patch_size": args.patch_size, "learning_rate": args.learning_rate}
    return {
        "isbi": {
            "data": {"train": {"image": str(ISBI / "train_raw.tif"), "labels": str(ISBI / "train_labels.tif"),
                               "slices": args.isbi_labelled},
                     "classes": ["interior", "membrane"], "val_fraction": 0.0},
            "unlabelled": [{"image": str(ISBI / "train_raw.tif")}, {"image": str(ISBI / "test_raw_unlabeled.tif")}],
            "model": common_model, "training": training,
            "test": (str(ISBI / "train_raw.tif"), str(ISBI / "train_labels.tif"), list(range(24, 30))),
            "range": "0:24",
        },
        "epfl": {
            "data": {"train": {"image": str(EPFL / "train_raw.tif"), "labels": str(EPFL / "train_labels.tif"),
                               "slices": args.epfl_labelled},
                     "classes": EPFL_CLASSES, "val_fraction": 0.0},
            "unlabelled": [{"image": str(EPFL / "train_raw.tif")}, {"image": str(EPFL / "test_raw.tif")}],
            "model": common_model, "training": training,
            "test": (str(EPFL / "test_raw.tif"), str(EPFL / "test_labels.tif"), list(range(5))),
        },
    }


def _score(dataset: str, model_path: Path, test: tuple) -> dict:
    from emseg.evaluation import evaluate, membrane_scores
    from emseg.inference import load_predictor

    raw, lab, zs = test
    image, truth = tifffile.imread(raw)[zs], tifffile.imread(lab)[zs]
    predictor = load_predictor(model_path)
    pred, _ = predictor.predict_volume(image)
    if dataset == "isbi":
        result = evaluate(pred, truth, classes=["interior", "membrane"], background=0)
        rand = membrane_scores(pred == 1, truth == 1, thin=True)
        return {"membrane_iou": result.per_class["membrane"]["iou"], "v_rand_thinned": rand["v_rand"],
                "mean_iou_foreground": result.mean_iou_foreground}
    result = evaluate(pred, truth, classes=EPFL_CLASSES, background=0)
    return {"mean_iou_foreground": result.mean_iou_foreground,
            "per_class_iou": {c: v["iou"] for c, v in result.per_class.items()}}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(dataset: str, route: str, seed: int, spec: dict, args, work: Path) -> dict:
    import emseg
    from emseg.config import config_from_dict
    from emseg.pretraining import load_pretrain_config, pretrain
    from emseg.training import next_sections, propagate

    minutes = args.minutes
    folder = work / dataset / route.replace("+", "_") / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    base = {"data": json.loads(json.dumps(spec["data"])), "model": dict(spec["model"]),
            "training": {**spec["training"], "seed": seed, "max_minutes": minutes}}
    if route == REFERENCES[dataset][0]:
        base["data"]["train"]["slices"] = REFERENCES[dataset][1]
    start = time.perf_counter()
    init = None
    if route.startswith(("mim", "moco")):
        method = route.split("+")[0]
        pre = {"data": {"unlabelled": spec["unlabelled"]}, "model": spec["model"],
               "pretraining": {"method": method, "max_minutes": minutes * args.pretrain_share, "seed": seed,
                               "patch_size": args.patch_size, "batch_size": max(4, args.batch_size),
                               "iterations_per_epoch": args.iterations_per_epoch}}
        result = pretrain(load_pretrain_config(_write(folder / "pretrain.yaml", pre)), folder / "pretrained",
                          overwrite=True, progress=False)
        init = str(result.out_dir)
        base["model"]["init"] = init
        base["training"]["max_minutes"] = minutes * (1 - args.pretrain_share)
    if route.endswith(SEMI_ROUTES):
        method = "mean_teacher" if route.startswith("mean_teacher") else "pseudo_label"
        base["data"]["unlabelled"] = spec["unlabelled"]
        base["training"]["semi_supervised"] = {"method": method, "weight": 1.0, "threshold": args.threshold,
                                               "ramp_up": 0.3, "balance": route.endswith("pseudo_balanced"),
                                               "cutmix": route.endswith("_cutmix"),
                                               "loss": "supervised" if route.endswith("pseudo_weighted") else "ce"}
        if route.endswith("pseudo_light"):  # one unlabelled patch per step: a cheaper step, more supervised ones
            base["training"]["semi_supervised"]["batch_size"] = 1
    if route == "4s":
        labelled = [int(z) for z in spec["data"]["train"]["slices"].split(",")]
        covered, rounds, span = set(labelled), 1, list(range(*map(int, spec["range"].split(":"))))
        while not set(span) <= covered:
            covered |= set(next_sections(covered, span, step=args.step))
            rounds += 1
        base["training"]["max_minutes"] = minutes / rounds
        cfg = config_from_dict(base, source="(few_labels 4s)")
        result = propagate(cfg, folder / "prop", sections=spec["range"], step=args.step, threshold=args.threshold,
                           overwrite=True, progress=False)
        model_path, extra = result.model_path, {"rounds": len(result.rounds), "minutes_per_round": minutes / rounds}
    else:
        cfg = config_from_dict(base, source=f"(few_labels {route})")
        result = emseg.train(cfg, folder / "run", overwrite=True, progress=False)
        model_path, extra = result.model_path, {"epochs": result.epochs}
    elapsed = time.perf_counter() - start
    scores = _score(dataset, model_path, spec["test"])
    return {"dataset": dataset, "route": route, "seed": seed, "minutes": minutes, "elapsed_s": round(elapsed, 1),
            "load_before": os.getloadavg()[0], **extra, "scores": scores}


def _table(runs: list[dict]) -> str:
    lines = ["| data | route | seeds | membrane IoU | V_Rand (thinned) | mean fg IoU | per-class IoU (EPFL) |",
             "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["dataset"], r["route"]) for r in runs}, key=lambda k: (k[0], ALL_ROUTES.index(k[1])))

    def ms(values):
        values = [v for v in values if v is not None and not np.isnan(v)]
        return f"{np.mean(values):.3f} +- {np.std(values):.3f}" if values else "n/a"

    for dataset, route in keys:
        group = [r for r in runs if (r["dataset"], r["route"]) == (dataset, route)]
        sc = [r["scores"] for r in group]
        per_class = ""
        if dataset == "epfl":
            classes = EPFL_CLASSES[1:]
            short = {"mitochondrial_boundary": "mito-bd", "mitochondrion": "mito", "membrane": "memb"}
            per_class = ", ".join(f"{short.get(c, c)} {np.nanmean([s['per_class_iou'][c] for s in sc]):.2f}"
                                  for c in classes)
        lines.append(f"| {dataset} | {route} | {len(group)} | "
                     f"{ms([s.get('membrane_iou') for s in sc]) if dataset == 'isbi' else '-'} | "
                     f"{ms([s.get('v_rand_thinned') for s in sc]) if dataset == 'isbi' else '-'} | "
                     f"{ms([s['mean_iou_foreground'] for s in sc])} | {per_class} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget per route")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--datasets", default="isbi,epfl")
    parser.add_argument("--routes", default=",".join(ALL_ROUTES))
    parser.add_argument("--features", default="8,16,32,64")
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iterations-per-epoch", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--pretrain-share", type=float, default=0.3)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--step", type=int, default=3)
    parser.add_argument("--isbi-labelled", default="5,15")
    parser.add_argument("--epfl-labelled", default="0,12,24")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", default=str(DATA), help="folder holding isbi2012-membranes/ and epfl-multiclass/")
    parser.add_argument("--keep-going", action="store_true",
                        help="record a run that fails (its error) and go on with the next")
    parser.add_argument("--work", default="/tmp/emseg-few-labels")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "few_labels.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items()
                if k not in ("seeds", "datasets", "routes", "work", "out", "data", "keep_going")}
    data = json.loads(out.read_text()) if out.is_file() else {}
    if data.get("settings") != settings:
        data = {"settings": settings, "runs": []}
    import torch

    data.update(cpu=_cpu(), torch_threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    specs = _datasets(args)
    routes = args.routes.split(",")
    for seed in [int(s) for s in args.seeds.split(",")]:
        for dataset in args.datasets.split(","):
            for route in routes:
                other_reference = route.startswith("reference-") and route != REFERENCES[dataset][0]
                if (route == "4s" and dataset != "isbi") or other_reference:
                    continue
                if any((r["dataset"], r["route"], r["seed"]) == (dataset, route, seed) for r in data["runs"]):
                    continue
                try:
                    record = _run(dataset, route, seed, specs[dataset], args, Path(args.work))
                except Exception as err:  # noqa: BLE001 - --keep-going: recorded, not scored
                    if not args.keep_going:
                        raise
                    data.setdefault("failed", []).append({"dataset": dataset, "route": route, "seed": seed,
                                                          "error": f"{type(err).__name__}: {err}"[:2000]})
                    out.write_text(json.dumps(data, indent=2))
                    print(f"{dataset} {route} seed {seed}: FAILED {type(err).__name__}: {err}", flush=True)
                    continue
                data["runs"].append(record)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(data, indent=2))
                print(f"{dataset} {route} seed {seed}: {json.dumps(record['scores'])[:160]} "
                      f"({record['elapsed_s']} s, load {record['load_before']:.1f})", flush=True)
    table = _table(data["runs"])
    data["table"] = table
    out.write_text(json.dumps(data, indent=2))
    print(table)


if __name__ == "__main__":
    main()

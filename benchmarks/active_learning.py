"""Active learning on EPFL multi-class: suggested slices vs random slices, same labelling budget.

Start from a model trained on 3 slices of the EPFL training volume; then R rounds of
"pick one more slice -> use its true labels as the user's correction -> fine-tune from the current
weights (emseg.active.ActiveSession, model.init)", with the slice picked either by
``emseg.active.suggest_slices`` (TTA variance of the current model; ``--method``) or at random
(seeded). Both arms get the same slices per round and the same minutes per round; every round is
scored on the EPFL test slices (mean foreground IoU). Several seeds.

    PYTHONPATH=src python benchmarks/active_learning.py --out /tmp/al --seeds 0 1 2 --rounds 3

Run again with the same ``--out`` after an interruption: finished start models and rounds are scored again, not
retrained (their picks are read from the rounds' ``round.json``).

The machine here is shared: ``--crop`` and the minutes make a reduced run; docs/BENCHMARKS.md says which.
Writes ``OUT/active_learning.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import tifffile
import yaml

EPFL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "epfl-multiclass"
CLASSES = ["background", "membrane", "mitochondrion", "mitochondrial_boundary", "vesicle", "psd", "axon"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--start-slices", type=int, default=3)
    ap.add_argument("--crop", type=int, nargs=2, default=[384, 512], help="centre crop Y X of every slice")
    ap.add_argument("--base-minutes", type=float, default=2.0)
    ap.add_argument("--round-minutes", type=float, default=1.0)
    ap.add_argument("--base-epochs", type=int, default=None,
                    help="fixed epochs (of 10 steps) for the start model instead of --base-minutes (which is then "
                         "only a cap): the same start model whatever the machine's load")
    ap.add_argument("--round-epochs", type=int, default=None,
                    help="fixed epochs (of 10 steps) per round instead of a time budget: equal training in both arms "
                         "on a shared machine (--round-minutes is then only a cap)")
    ap.add_argument("--features", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--method", default="tta", help="suggest method: tta, entropy (one model)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from emseg.active import ActiveSession, suggest_slices
    from emseg.evaluation import evaluate
    from emseg.inference import load_predictor
    from emseg.training import train

    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cy, cx = args.crop

    def crop(a):
        y0, x0 = (a.shape[1] - cy) // 2, (a.shape[2] - cx) // 2
        return np.ascontiguousarray(a[:, y0:y0 + cy, x0:x0 + cx])

    raw, lab = crop(tifffile.imread(EPFL / "train_raw.tif")), crop(tifffile.imread(EPFL / "train_labels.tif"))
    test_raw, test_lab = crop(tifffile.imread(EPFL / "test_raw.tif")), crop(tifffile.imread(EPFL / "test_labels.tif"))
    for name, a in (("raw", raw), ("labels", lab)):
        tifffile.imwrite(out / f"train_{name}.tif", a, photometric="minisblack")
    val_z = raw.shape[0] - 1  # the last training slice validates every run (never labelled by a round)

    def score(model) -> float:
        pred, _ = load_predictor(model, overlap="auto").predict_volume(test_raw)
        return float(evaluate(pred, test_lab, classes=CLASSES).mean_iou_foreground)

    rows = []
    for seed in args.seeds:
        rng = random.Random(seed)
        start = sorted(rng.sample(range(val_z), args.start_slices))
        base_dir = out / f"seed-{seed}" / "base"
        cfg = {
            "data": {"train": {"image": str(out / "train_raw.tif"), "labels": str(out / "train_labels.tif"),
                               "slices": ",".join(map(str, start))},
                     "val": {"image": str(out / "train_raw.tif"), "labels": str(out / "train_labels.tif"),
                             "slices": str(val_z)},
                     "classes": CLASSES},
            "model": {"name": "unet2d", "features": args.features},
            "training": {"max_minutes": args.base_minutes, "batch_size": 4, "patch_size": 128, "seed": seed,
                         "iterations_per_epoch": 10,
                         "num_threads": args.threads},
        }
        if args.base_epochs is not None:
            cfg["training"]["epochs"] = args.base_epochs
        base_dir.parent.mkdir(parents=True, exist_ok=True)
        (base_dir.parent / "base.yaml").write_text(yaml.safe_dump(cfg))
        if not (base_dir / "summary.json").is_file():
            train(base_dir.parent / "base.yaml", base_dir, overwrite=True, progress=False)
        base_score = score(base_dir)
        for arm in ("suggest", "random"):
            session = ActiveSession(out / f"seed-{seed}" / arm, base_run=base_dir)
            labelled = set(start)
            arm_rng = random.Random(1000 + seed)
            history = [{"round": 0, "slices": sorted(labelled), "test_fg_iou": base_score}]
            for r in range(1, args.rounds + 1):
                pool = [z for z in range(val_z) if z not in labelled]
                done = out / f"seed-{seed}" / arm / f"round-{r}"
                if (done / "summary.json").is_file() and (done / "round.json").is_file():
                    # an earlier, interrupted run finished this round: score it again, do not retrain
                    info = json.loads((done / "round.json").read_text())
                    z = info["corrections"][-1]["slices"][0]
                    if arm == "random" and arm_rng.choice(pool) != z:
                        raise SystemExit(f"{done}: picked slice {z}, but seed {seed} picks another: not this run's")
                    labelled.add(z)
                    history.append({"round": r, "picked": z, "pick_score": None, "resumed": True,
                                    "val_mean_iou": info["best_val_mean_iou"], "test_fg_iou": score(done)})
                    continue
                t0 = time.perf_counter()
                if arm == "suggest":
                    predictor = load_predictor(session.current_model(), tta=False, overlap="auto")
                    pick = suggest_slices(predictor, raw, k=1, method=args.method, exclude=sorted(labelled) + [val_z])[0]
                    z, chosen_score = pick.z, pick.score
                else:
                    z, chosen_score = arm_rng.choice(pool), None
                pick_s = time.perf_counter() - t0
                session.add_corrections(raw, lab, [z], image_name="epfl_train")  # the true labels as the correction
                overrides = {"training": {"seed": seed * 100 + r}}
                if args.round_epochs is not None:
                    overrides["training"]["epochs"] = args.round_epochs
                result = session.fine_tune(minutes=args.round_minutes, overrides=overrides)
                labelled.add(z)
                history.append({"round": r, "picked": z, "pick_score": chosen_score, "pick_s": round(pick_s, 1),
                                "val_mean_iou": result.best_val_mean_iou, "test_fg_iou": score(result.run_dir)})
                print(f"seed {seed} {arm:7s} round {r}: slice {z:2d} -> test fg IoU {history[-1]['test_fg_iou']:.4f}",
                      flush=True)
            rows.append({"seed": seed, "arm": arm, "start": start, "rounds": history})

    summary = {}
    for arm in ("suggest", "random"):
        per_round = np.array([[h["test_fg_iou"] for h in row["rounds"]] for row in rows if row["arm"] == arm])
        summary[arm] = {"mean": per_round.mean(0).round(4).tolist(), "std": per_round.std(0).round(4).tolist()}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    report = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": rows,
              "summary": summary, "cpu": cpu, "load": os.getloadavg(), "python": platform.python_version()}
    (out / "active_learning.json").write_text(json.dumps(report, indent=2))
    print("\nmean test foreground IoU per round (round 0 = the 3-slice start), over seeds", args.seeds)
    print("| arm | " + " | ".join(f"round {r}" for r in range(args.rounds + 1)) + " |")
    print("|---" * (args.rounds + 2) + "|")
    for arm, s in summary.items():
        print(f"| {arm} | " + " | ".join(f"{m:.4f} ± {d:.4f}" for m, d in zip(s["mean"], s["std"])) + " |")


if __name__ == "__main__":
    main()

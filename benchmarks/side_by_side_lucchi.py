"""emseg default vs plain MONAI BasicUNet, the reference trained until the default finishes (Lucchi++; EPFL, ISBI too; issue 22).

Both arms train **at the same time**, in two processes with one torch thread each, so that they see the same
machine and the same load (the development machine is shared; two arms run one after the other would not):

* ``default``: ``emseg.train`` with the default configuration: only the training data, the classes,
  ``training.max_minutes`` and ``training.num_threads: 1`` (the route probe, budget-aware batch and patch
  sizes, the validation split of 15 % of the slices: everything else is emseg's default);
* ``basicunet``: the plain reference of ``plain_unet.py`` (MONAI BasicUNet 32..256, Dice + CE, Adam 1e-3,
  batch 8 of 256^2, flips, fp32) on all training slices, trained **until the default's training returns**
  (the default's set-up -- step-time measurement, route probe -- is outside its ``max_minutes``; the
  reference gets that time too), ``3 x minutes`` at the most.

Scores on the test slices (each arm predicts in memory, one thread): EPFL: per-class IoU and mean foreground IoU
on the 5 test slices; ISBI: trained on sections 0-23, membrane IoU and thinned V_Rand (``membrane_scores``) on
sections 24-29; Lucchi++ (``--dataset lucchi``, volumes from ``em-volumes lucchipp``): trained on the whole
training volume, mitochondrion IoU on every 8th test slice (z = 0, 8, ..., 160, as ``lucchi.py --test-slices
0:165:8``).

    python benchmarks/side_by_side_lucchi.py --dataset lucchi --minutes 30 --out /work/data/i22-sbs

Writes ``OUT/DATASET-MINUTESmin.json`` and prints a table. Keep ``OUT`` outside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import tifffile

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
EPFL_CLASSES = ["background", "membrane", "mitochondrion", "mitochondrial_boundary", "vesicle", "psd", "axon"]
ISBI_CLASSES = ["interior", "membrane"]
#: ``--lucchi``: the folder of the Lucchi++ volumes (``../shared/tools/em-volumes lucchipp``).
LUCCHI = [Path("/work/data/lucchipp")]
#: ``--test-slices``: ``0:165:8`` (every 8th Lucchi++ test slice) or ``all`` (the whole test volume).
TEST_SLICES = ["0:165:8"]


def machine() -> dict:
    text = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    return {"cpu": model, "bf16_flags": sorted({f for f in ("avx512_bf16", "amx_bf16") if f in text}),
            "cores": os.cpu_count(), "python": platform.python_version()}


def prepare(dataset: str, work: Path) -> dict:
    """The training and test arrays of ``dataset`` as files in ``work`` (ISBI split 0-23 / 24-29)."""
    work.mkdir(parents=True, exist_ok=True)
    if dataset == "epfl":
        d = DATA / "epfl-multiclass"
        return {"train_raw": d / "train_raw.tif", "train_labels": d / "train_labels.tif",
                "test_raw": d / "test_raw.tif", "test_labels": d / "test_labels.tif", "classes": EPFL_CLASSES}
    if dataset == "isbi":
        d = DATA / "isbi2012-membranes"
        raw, lab = tifffile.imread(d / "train_raw.tif"), tifffile.imread(d / "train_labels.tif")
        files = {}
        for name, array in (("train_raw", raw[:24]), ("train_labels", lab[:24]), ("test_raw", raw[24:]),
                            ("test_labels", lab[24:])):
            files[name] = work / f"{name}.tif"
            if not files[name].is_file():
                tifffile.imwrite(files[name], array, photometric="minisblack")
        return {**files, "classes": ISBI_CLASSES}
    if dataset == "lucchi":  # Lucchi++ (em-volumes lucchipp): whole training volume, every 8th test slice
        d = LUCCHI[0]
        files = {"train_raw": d / "lucchipp_train_raw.tif", "train_labels": d / "lucchipp_train_mito.tif"}
        if TEST_SLICES[0] == "all":  # the whole 165-slice test volume
            return {**files, "test_raw": d / "lucchipp_test_raw.tif", "test_labels": d / "lucchipp_test_mito.tif",
                    "classes": ["background", "mitochondrion"]}
        files.update(test_raw=work / "test_raw_0_165_8.tif", test_labels=work / "test_labels_0_165_8.tif")
        for name, source in (("test_raw", "lucchipp_test_raw.tif"), ("test_labels", "lucchipp_test_mito.tif")):
            if not files[name].is_file():
                tifffile.imwrite(files[name], tifffile.imread(d / source)[0:165:8], photometric="minisblack")
        return {**files, "classes": ["background", "mitochondrion"]}
    raise SystemExit(f"unknown --dataset {dataset!r}: epfl, isbi or lucchi")


def score_labels(dataset: str, pred, truth, classes: list[str]) -> dict:
    from emseg.evaluation import class_rand_info_scores, evaluate, membrane_scores

    result = evaluate(pred, truth, classes=classes, background=0)
    out = {"mean_iou_foreground": result.mean_iou_foreground,
           "per_class_iou": {c: v["iou"] for c, v in result.per_class.items()}}
    if dataset == "isbi":
        out["v_rand_thinned"] = membrane_scores(pred == 1, truth == 1, thin=True)["v_rand"]
    if dataset == "lucchi":  # Dice, and V_Rand / V_Info of the mitochondria (3-D components when contiguous)
        out["dice"] = result.per_class["mitochondrion"]["f1"]
        ri = class_rand_info_scores(pred, truth, classes=classes, background=0,
                                    per_slice=TEST_SLICES[0] != "all")["mitochondrion"]
        out.update({k: float(v) for k, v in ri.items()})
    return out


def score(dataset: str, predictor, files: dict, work: Path | None = None, arm: str = "") -> dict:
    t0 = time.perf_counter()
    image, truth = tifffile.imread(files["test_raw"]), tifffile.imread(files["test_labels"])
    pred, _ = predictor.predict_volume(image)
    out = {"predict_s": round(time.perf_counter() - t0, 1), "test_shape": list(image.shape)}
    if work is not None:  # kept, to post-process and re-score without predicting again
        tifffile.imwrite(work / f"{arm}_pred.tif", pred.astype("uint8"), photometric="minisblack")
    out.update(score_labels(dataset, pred, truth, files["classes"]))
    if dataset == "lucchi" and arm == "default" and EXTRA_ROWS[0]:
        out["extra_rows"] = extra_rows(predictor, pred, truth, image, files["classes"])
    out["predict_score_s"] = round(time.perf_counter() - t0, 1)
    return out


#: ``--extra-rows``: the default's model also post-processed and with test-time augmentation (Lucchi++).
EXTRA_ROWS = [False]


def extra_rows(predictor, pred, truth, image, classes: list[str]) -> dict:
    """Rows that reuse the default's model: post-processing of its labels, and TTA on every 8th test slice."""
    from emseg.inference import postprocess_labels

    rows = {}
    for name, kw in (("post median 3, min-size 1000, per slice", {"median": 3, "min_size": 1000, "per_slice": True}),
                     ("post median 5, min-size 1000, 3-D", {"median": 5, "min_size": 1000, "per_slice": False})):
        t0 = time.perf_counter()
        rows[name] = {**score_labels("lucchi", postprocess_labels(pred, **kw), truth, classes),
                      "seconds": round(time.perf_counter() - t0, 1)}
    every8 = slice(0, None, 8) if len(image) > 21 else slice(None)
    saved = TEST_SLICES[0]
    TEST_SLICES[0] = "0:165:8"  # per-slice instance scores on the subset
    try:
        rows["no TTA, every 8th test slice"] = score_labels("lucchi", pred[every8], truth[every8], classes)
        predictor.tta = True
        t0 = time.perf_counter()
        tta, _ = predictor.predict_volume(image[every8])
        rows["TTA (4 flips), every 8th test slice"] = {**score_labels("lucchi", tta, truth[every8], classes),
                                                       "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        predictor.tta = False
        TEST_SLICES[0] = saved
    return rows


def run_arm(args) -> None:
    """One arm, in its own process (``--arm``): train, signal, score, write ``ARM.json``."""
    import torch

    torch.set_num_threads(1)
    files = prepare(args.dataset, args.work)
    done = args.work / "default.done"
    if args.arm == "default":
        import yaml

        import emseg
        from emseg.inference import load_predictor

        cfg = {"data": {"train": {"image": str(files["train_raw"]), "labels": str(files["train_labels"])},
                        "classes": files["classes"]},
               "training": {"max_minutes": args.minutes, "num_threads": 1, "seed": args.seed}}
        path = args.work / "default.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        t0 = time.perf_counter()
        try:
            result = emseg.train(path, args.work / "default", overwrite=True, progress=False)
        finally:
            done.touch()  # the reference stops at its next step
        wall = time.perf_counter() - t0
        summary = json.loads((args.work / "default" / "summary.json").read_text())
        metrics = [json.loads(line) for line in (args.work / "default" / "metrics.jsonl").read_text().splitlines()
                   if line.strip()]
        info = {"wall_s": round(wall, 1), "train_s": round(result.elapsed_s, 1), "epochs": result.epochs,
                "steps": max((m.get("iteration", 0) or 0 for m in metrics), default=None),
                "best_epoch": result.best_epoch, "val_mean_iou": result.best_val_mean_iou,
                "route": summary.get("route", {}).get("name"), "budget": summary.get("budget")}
        predictor = load_predictor(args.work / "default" / "model.pt")
    else:
        from plain_unet import train_basicunet

        t0 = time.perf_counter()
        predictor, info = train_basicunet(tifffile.imread(files["train_raw"]), tifffile.imread(files["train_labels"]),
                                          classes=files["classes"], minutes=3 * args.minutes, threads=1,
                                          seed=args.seed, stop_file=done)
        info["wall_s"] = round(time.perf_counter() - t0, 1)
        import torch

        torch.save(predictor.model.state_dict(), args.work / "basicunet_state.pt")
    info.update(load_after_training=os.getloadavg())
    info.update(score(args.dataset, predictor, files, args.work, args.arm), load_after=os.getloadavg())
    (args.work / f"{args.arm}.json").write_text(json.dumps(info, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=["epfl", "isbi", "lucchi"])
    parser.add_argument("--lucchi", type=Path, default=LUCCHI[0], help="folder of the Lucchi++ volumes")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/emseg-side-by-side"))
    parser.add_argument("--test-slices", default="0:165:8", choices=["0:165:8", "all"],
                        help="Lucchi++: every 8th test slice (default) or the whole test volume")
    parser.add_argument("--extra-rows", action="store_true",
                        help="Lucchi++: also score the default post-processed and with TTA (every 8th slice)")
    parser.add_argument("--arm", choices=["default", "basicunet"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    LUCCHI[0] = args.lucchi
    TEST_SLICES[0] = args.test_slices
    EXTRA_ROWS[0] = args.extra_rows
    if args.arm:
        run_arm(args)
        return
    work = args.out / f"{args.dataset}-{args.minutes:g}min-seed{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "default.done").unlink(missing_ok=True)
    for arm in ("default", "basicunet"):
        (work / f"{arm}.json").unlink(missing_ok=True)
    load_before = os.getloadavg()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {arm: subprocess.Popen([sys.executable, __file__, "--dataset", args.dataset, "--minutes", str(args.minutes),
                                    "--seed", str(args.seed), "--lucchi", str(args.lucchi), "--test-slices", args.test_slices,
                                    *(["--extra-rows"] if args.extra_rows else []), "--arm", arm, "--work", str(work)],
                                   env=env)
             for arm in ("default", "basicunet")}
    codes = {arm: p.wait() for arm, p in procs.items()}
    if any(codes.values()):
        raise SystemExit(f"an arm failed: exit codes {codes}; see its output above")
    rows = {arm: json.loads((work / f"{arm}.json").read_text()) for arm in procs}
    report = {"dataset": args.dataset, "minutes": args.minutes, "seed": args.seed, "machine": machine(),
              "load_before": load_before, "load_after": os.getloadavg(),
              "command": " ".join(["python", "benchmarks/side_by_side_lucchi.py", *sys.argv[1:]]), "rows": rows}
    out = args.out / f"{args.dataset}-{args.minutes:g}min-seed{args.seed}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    classes = list(rows["default"]["per_class_iou"])
    print(f"\n{args.dataset}, {args.minutes:g} min, seed {args.seed}, load {load_before[0]:.1f} -> "
          f"{report['load_after'][0]:.1f}")
    print("| arm | steps | wall s | mean fg IoU | " + " | ".join(classes)
          + (" | V_Rand (thinned) |" if args.dataset == "isbi" else " |"))
    for arm, row in rows.items():
        print(f"| {arm} | {row.get('steps')} | {row['wall_s']} | {row['mean_iou_foreground']:.3f} | "
              + " | ".join(f"{row['per_class_iou'][c]:.3f}" for c in classes)
              + (f" | {row['v_rand_thinned']:.3f} |" if args.dataset == "isbi" else " |"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

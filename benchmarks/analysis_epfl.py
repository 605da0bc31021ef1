"""Issue "Explain and analyse" on the EPFL test slices: Grad-CAM overlays and object tables.

    .venv/bin/python benchmarks/analysis_epfl.py \
        --models benchmarks/results/epfl_multiclass/unet2d benchmarks/results/epfl_unet2d_wide

For each model (run directory): segments the 5 EPFL test slices, writes Grad-CAM
overlays for mitochondrion and membrane on test slice z=0 (at the bottleneck, as
WAE-Net, and at the last decoder block) to docs/gradcam/, and compares the
predicted mitochondria with the ground truth's (2-D connected components per
slice, 5 nm pixels): object count and median area, all objects and objects of at
least 50 px (the ground truth holds 1-2 px annotation specks). Writes
benchmarks/results/analysis_epfl.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

import emseg
from emseg.analysis import explain, measure_objects

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "epfl-multiclass"


def object_summary(labels: np.ndarray, raw: np.ndarray) -> dict:
    table = measure_objects(labels, image=raw, voxel_size=(5.0, 5.0, 5.0), class_ids=[2],
                            classes=["background", "membrane", "mitochondrion"] + [f"c{i}" for i in range(3, 7)],
                            mode="2d")
    big = table[table["voxel_count"] >= 50]
    return {"count": int(len(table)), "median_area_nm2": float(table["area"].median()) if len(table) else None,
            "count_ge_50px": int(len(big)), "median_area_nm2_ge_50px": float(big["area"].median()) if len(big) else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path, required=True)
    parser.add_argument("--docs", type=Path, default=Path("docs/gradcam"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/analysis_epfl"))
    args = parser.parse_args()
    args.docs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    from emseg.io import read_image

    raw, truth = read_image(DATA / "test_raw.tif"), read_image(DATA / "test_labels.tif")
    report = {"ground_truth": object_summary(truth, raw), "models": {}}
    for model in args.models:
        name = model.name
        pred_path = args.out / f"{name}_test_prediction.tif"
        emseg.predict(model, DATA / "test_raw.tif", pred_path, overwrite=True, progress=False)
        pred = read_image(pred_path)
        entry = {"objects": object_summary(pred, raw), "gradcam": {}}
        for layer in ("bottleneck", "decoders.3"):
            out = args.out / f"{name}_{layer}"
            t0 = time.perf_counter()
            summary = explain(model, DATA / "test_raw.tif", classes=["mitochondrion", "membrane"], out_dir=out,
                              layer=layer, z=0, overwrite=True)
            entry["gradcam"][layer] = {"seconds": round(time.perf_counter() - t0, 1), "summary": summary}
            for cls in ("mitochondrion", "membrane"):
                shutil.copy(out / f"gradcam_{cls}.png", args.docs / f"{name}_{layer.replace('.', '')}_{cls}.png")
        report["models"][name] = entry
        print(name, json.dumps(entry["objects"]))
    print("ground truth", json.dumps(report["ground_truth"]))
    Path("benchmarks/results/analysis_epfl.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()

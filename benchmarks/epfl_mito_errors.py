"""Where the mitochondrion-interior errors of EPFL test predictions lie.

For each prediction (a uint8 label TIFF of the 5 EPFL test slices, as written
by benchmarks/epfl_multiclass.py into ``RUN_DIR/test_prediction.tif``) prints
mitochondrion-interior IoU per test slice, and the IoU over the 5 slices with
and without one atypical mitochondrion of test slices 3 and 4 (its interior
has a vesicle-like texture; the networks label much of it as vesicles):

    .venv/bin/python benchmarks/epfl_mito_errors.py RUN_DIR/test_prediction.tif [...] --json OUT.json

The object is the ground-truth mitochondrion (interior plus boundary ring)
that covers test pixel (y=570, x=64) in slices 3 and 4, grown by 5 pixels;
"without it" leaves those pixels out of both prediction and truth.  With
``--figure PNG`` the first prediction is drawn next to the image and the
truth around that object.  Writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "epfl-multiclass"
MITO, RING = 2, 3
ATYPICAL = {3: (570, 64), 4: (570, 64)}  # test slice -> a (y, x) inside the atypical mitochondrion
PALETTE = np.array([[0, 0, 0], [255, 255, 0], [255, 0, 0], [255, 128, 0], [0, 255, 0], [0, 0, 255], [255, 0, 255]],
                   np.uint8)  # background, membrane, mitochondrion, boundary, vesicle, PSD, axon


def atypical_mask(truth: np.ndarray) -> np.ndarray:
    mask = np.zeros(truth.shape, bool)
    for z, (y, x) in ATYPICAL.items():
        labels, _ = ndimage.label(np.isin(truth[z], (MITO, RING)))
        if labels[y, x] == 0:
            raise ValueError(f"test slice {z}: pixel ({y}, {x}) is not inside a labelled mitochondrion")
        mask[z] = ndimage.binary_dilation(labels == labels[y, x], iterations=5)
    return mask


def iou(truth: np.ndarray, pred: np.ndarray, keep: np.ndarray | None = None) -> float:
    a, b = truth == MITO, pred == MITO
    if keep is not None:
        a, b = a & keep, b & keep
    return float((a & b).sum() / (a | b).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="+", type=Path)
    parser.add_argument("--truth", type=Path, default=DATA / "test_labels.tif")
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    truth = tifffile.imread(args.truth)
    mask = atypical_mask(truth)
    rows = {}
    for path in args.predictions:
        pred = tifffile.imread(path)
        if pred.shape != truth.shape:
            raise SystemExit(f"{path}: shape {pred.shape} differs from the truth's {truth.shape} ({args.truth})")
        inside = mask & (truth == MITO)
        whole, without = iou(truth, pred), iou(truth, pred, ~mask)
        rows[str(path)] = r = {
            "per_slice": [round(iou(truth[z], pred[z]), 4) for z in range(truth.shape[0])],
            "all": whole,
            "without_atypical": without,
            "atypical_interior_px": int(inside.sum()),
            "atypical_interior_predicted": np.bincount(pred[inside], minlength=len(PALETTE)).tolist(),
        }
        print(f"{path}: per slice {r['per_slice']}, all {whole:.3f}, without the atypical mitochondrion "
              f"{without:.3f}; its {r['atypical_interior_px']} interior px predicted as "
              f"{r['atypical_interior_predicted']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.figure:
        raw = tifffile.imread(DATA / "test_raw.tif")
        pred = tifffile.imread(args.predictions[0])
        z, ys, xs = 4, slice(450, 700), slice(0, 250)
        grey = np.repeat(raw[z][ys, xs, None], 3, axis=2).astype(np.float32)
        panels = [grey] + [0.5 * grey + 0.5 * PALETTE[lab[z][ys, xs]] for lab in (truth, pred)]
        from PIL import Image

        Image.fromarray(np.concatenate(panels, axis=1).astype(np.uint8)).save(args.figure)
        print(f"figure: {args.figure} (test slice {z}, y 450-700, x 0-250: image, truth, prediction)")


if __name__ == "__main__":
    main()

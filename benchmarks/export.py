"""CPU prediction speed of one EPFL slice stack through eager torch, --jit, the TorchScript export and
onnxruntime (the ONNX export), in one run, as ratios to eager torch (fp32 everywhere).

    PYTHONPATH=src python benchmarks/export.py [--slices 2] [--threads 2] [--out benchmarks/results/export.json]

The network is the default ``unet2d`` (7 classes, freshly initialised: speed does not depend on the weights),
written as a model.pt like `emseg train` writes it, then exported; each route predicts the same slices
(after one warm-up slice) and the labels are compared with eager torch.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

EPFL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "epfl-multiclass"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from emseg.export import export_model, load_exported
    from emseg.inference import Predictor
    from emseg.models import build_model, model_divisor
    from emseg.training import save_checkpoint

    raw = tifffile.imread(EPFL / "test_raw.tif")[: args.slices + 1]
    classes = [str(k) for k in range(7)]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        net = build_model("unet2d", in_channels=1, num_classes=7, options={}, pretrained=False)
        save_checkpoint(folder / "model.pt", {
            "backend": "torch", "model": {"name": "unet2d", "options": {}, "in_channels": 1, "context_slices": 1,
                                          "spatial_dims": 2},
            "classes": classes, "normalization": {"mean": float(raw.mean()), "std": float(raw.std())},
            "inference": {"window": [512, 512], "overlap": 0.25, "divisor": model_divisor(net)},
            "preprocess": {}, "state": net.state_dict()})
        onnx_path = export_model(folder / "model.pt", folder / "model.onnx", format="onnx")["path"]
        ts_path = export_model(folder / "model.pt", folder / "model_ts.pt", format="torchscript")["path"]
        routes = {
            "eager torch": lambda: Predictor.from_checkpoint(folder / "model.pt", precision="fp32"),
            "--jit": lambda: Predictor.from_checkpoint(folder / "model.pt", precision="fp32", jit=True),
            "TorchScript export": lambda: _torchscript_predictor(folder / "model.pt", ts_path),
            "onnxruntime (ONNX export)": lambda: load_exported(onnx_path, precision="fp32"),
        }
        rows, reference = [], None
        for name, make in routes.items():
            predictor = make()
            predictor.predict_volume(raw[:1])  # warm-up: set-up, tracing, first-shape costs
            start = time.perf_counter()
            labels, _ = predictor.predict_volume(raw[1:])
            seconds = time.perf_counter() - start
            reference = labels if reference is None else reference
            rows.append({"route": name, "seconds": seconds, "mvox_s": labels.size / seconds / 1e6,
                         "labels_equal_eager": bool(np.array_equal(labels, reference))})
    base = rows[0]["seconds"]
    for row in rows:
        row["speed_vs_eager"] = base / row["seconds"]
    print(f"{'route':28s} {'s':>7s} {'MVox/s':>7s} {'x eager':>8s}  labels = eager")
    for row in rows:
        print(f"{row['route']:28s} {row['seconds']:7.2f} {row['mvox_s']:7.3f} {row['speed_vs_eager']:8.2f}  "
              f"{row['labels_equal_eager']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"slices": args.slices, "shape": list(raw.shape[1:]), "threads": args.threads,
                                    "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                                    "rows": rows}, indent=1))


def _torchscript_predictor(model_pt: Path, ts_path: Path):
    from emseg.inference import Predictor

    predictor = Predictor.from_checkpoint(model_pt, precision="fp32")
    predictor.model = torch.jit.load(str(ts_path), map_location="cpu")
    return predictor


if __name__ == "__main__":
    main()

"""Slices per forward pass: one route at several batch sizes, in process, interleaved (issue 21).

    PYTHONPATH=src .venv/bin/python benchmarks/route_batch.py --model RUN_DIR \
        --route bf16-eager-cl-t1-w768x1024-b4 --batches 1,2,4 --slices 8 --repeats 3

The route's batch is replaced by each of ``--batches`` (with a whole-slice window: slices per forward);
every variant predicts the same ``--slices`` EPFL slices (768 x 1024) in rounds A B C A B C ..., and
keeps its best rate.  Also: whether each variant's labels equal those of batch 1 (bit for bit).
Writes ``--out`` (JSON) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from emseg.inference import Predictor, Route
from emseg.inference._route import route_overlap

ROOT = Path(__file__).resolve().parents[1]
EPFL_RAW = ROOT / ".." / "shared" / "data" / "epfl-multiclass" / "train_raw.tif"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--route", required=True, help="a route name; its batch is varied")
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--raw", type=Path, default=EPFL_RAW)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "route_batch.json")
    args = ap.parse_args()

    route = Route.parse(args.route)
    raw = np.asarray(tifffile.imread(args.raw)[:args.slices])
    base = Predictor.from_checkpoint(args.model)
    radius = base.receptive_radius()
    variants = {}
    for b in (int(v) for v in args.batches.split(",")):
        r = dataclasses.replace(route, batch_size=b)
        options = {**r.predictor_options(), "overlap": route_overlap(radius, r.window or base.window)}
        variants[r.name] = Predictor.from_checkpoint(args.model, **options)
    torch.set_num_threads(route.threads)
    labels, rates = {}, {name: [] for name in variants}
    for name, p in variants.items():  # warm-up (oneDNN primitives, compile) and the labels
        labels[name] = p.predict_volume(raw)[0]
    for _ in range(args.repeats):
        for name, p in variants.items():
            t0 = time.perf_counter()
            p.predict_volume(raw)
            rates[name].append(raw.size / (time.perf_counter() - t0) / 1e6)
    first = next(iter(labels.values()))
    rows = [{"route": name, "slices_per_forward": variants[name].slices_per_forward(raw.shape[1:]),
             "best_mvox_s": max(v), "runs": v, "labels_equal_first": bool(np.array_equal(labels[name], first))}
            for name, v in rates.items()]
    result = {"route": args.route, "slices": args.slices, "threads": route.threads, "load": os.getloadavg(),
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for row in rows:
        print(f"{row['route']:<36} {row['slices_per_forward']} slices/forward  best {row['best_mvox_s']:.3f} MVox/s  "
              f"runs {' '.join(f'{v:.3f}' for v in row['runs'])}  labels = first: {row['labels_equal_first']}")
    print(f"load {result['load']}; written {args.out}")


if __name__ == "__main__":
    main()

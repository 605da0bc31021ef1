"""Where a GPU run's time goes: start-up against the engine's steady rate, on two volume sizes.

``benchmarks/gpu_throughput.py`` measures ``emseg predict`` end to end (process start to exit).  On a GPU
the engine's work on 1 GVox takes seconds, so the fixed cost of starting (Python imports, CUDA start-up,
loading the model, the receptive-field probe) weighs on that figure as much as the pipeline does.  This
script separates them, in one run on the machine at hand:

    PYTHONPATH=src python benchmarks/gpu_steady.py --model MODEL_DIR \\
        --raw ../shared/data/epfl-multiclass/train_raw.tif --route bf16-eager-cl-t8-w768x1024-b4 \\
        --out $OUT/gpu_steady.json

* ``import_s``: ``python -c "from emseg.cli import main"`` (the CLI's imports), and ``cuda_init_s``
  (``import torch`` and the first CUDA tensor), each in a fresh process;
* for ``--gvox`` sizes (default 0.25 and 1.0): ``emseg predict --route ROUTE`` wall clock and the engine's own
  time (its log line ``segmented ... in T s``: from the first block read to the last block written), for the
  route and for the same route with the network replaced by a constant (the pipeline alone); the marginal
  rate between the two sizes (extra voxels / extra wall seconds), which the fixed start-up does not enter;
* the network alone in the same run (the route's precision, layout, whole slices and slices per forward);
* the route once more on the largest volume with ``--io-threads 1`` (``--compare-io``): the engine's
  reads and writes on one thread each, as before they used up to 4 on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import build_volume, run_emseg  # noqa: E402

DEVICE = "cuda"  # --device cpu: a smoke test of this script without a GPU
_SEGMENTED = re.compile(r"segmented .*? \((\d+) voxels\) in ([\d.]+) s")


def fresh_process_s(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def predict(model: Path, volume: Path, out: Path, route: str, extra: tuple[str, ...] = ()) -> dict:
    """``emseg predict --route ROUTE`` with its log: wall clock and the engine's own time."""
    run = run_emseg(model, volume, out, 0, ["--route", route, "--overwrite", *extra], quiet=False)
    match = _SEGMENTED.search(" ".join(run.pop("output").split()))
    engine = float(match.group(2)) if match else None
    voxels = int(match.group(1)) if match else None
    return {"route": route, "wall_s": run["wall_s"], "engine_s": engine, "voxels": voxels,
            "peak_rss_gb": run["peak_rss_gb"], "engine_mvox_s": voxels / engine / 1e6 if engine else None,
            "end_to_end_mvox_s": voxels / run["wall_s"] / 1e6 if voxels else None}


def route_network_rate(model_dir: Path, route: str, shape: tuple[int, int]) -> float:
    """MVox/s of the bare network on the route's batch of whole slices (its precision and layout)."""
    import torch

    import gpu_throughput
    from emseg.inference import Predictor, Route

    gpu_throughput.DEVICE = DEVICE
    r = Route.parse(route)
    p = Predictor.from_checkpoint(model_dir, precision="fp32", device=torch.device(DEVICE))
    return gpu_throughput.network_rate(p.model, shape, r.batch_size, torch.bfloat16 if r.precision == "bf16" else None,
                                       channels=p.context_slices, channels_last=r.channels_last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--route", required=True, help="a route name (the one gpu_throughput.py's tuner chose)")
    ap.add_argument("--gvox", default="0.25,1.0")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--compare-io", type=int, default=1,
                    help="also run the route on the largest volume with --io-threads N (default 1: the engine "
                    "before it read and wrote with several threads on a GPU); 0 to skip")
    ap.add_argument("--device", default="cuda", help="cpu: a quick smoke test of this script without a GPU")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device

    import tifffile

    from emseg.inference import Route

    result: dict = {"route": args.route}

    def save(step: str) -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"[{time.strftime('%H:%M:%S')}] {step}: {json.dumps(result.get(step), default=str)[:800]}", flush=True)

    result["import_s"] = fresh_process_s("from emseg.cli import main")
    save("import_s")
    result["cuda_init_s"] = fresh_process_s(f"import torch; torch.zeros(1, device={DEVICE!r}).sum().item()")
    save("cuda_init_s")
    raw = np.load(args.raw) if args.raw.suffix == ".npy" else tifffile.imread(args.raw)
    work = args.work or Path(tempfile.mkdtemp(prefix="emseg-steady-"))
    tuned = Route.parse(args.route)
    const = dataclasses.replace(tuned, precision="const", jit=False, channels_last=False, compiled=False).name
    runs = []
    for gvox in [float(g) for g in args.gvox.split(",")]:
        volume = work / f"volume_{gvox}.zarr"
        shape = build_volume(volume, gvox, chunk_z=8, raw=raw)
        for route in (args.route, const):
            run = predict(args.model, volume, work / f"labels_{gvox}_{route}.zarr", route)
            run.update(gvox=gvox, shape=list(shape))
            runs.append(run)
            result["runs"] = runs
            save("runs")
    if args.compare_io:  # the same route, the engine's reads and writes on --compare-io threads each
        run = predict(args.model, volume, work / f"labels_{gvox}_io{args.compare_io}.zarr", args.route,
                      ("--io-threads", str(args.compare_io)))
        run.update(gvox=gvox, shape=list(shape), io_threads=args.compare_io)
        result["io_threads_run"] = run
        save("io_threads_run")
    result["network_alone_mvox_s"] = route_network_rate(args.model, args.route, tuple(raw.shape[1:]))
    save("network_alone_mvox_s")
    sizes = sorted({r["gvox"] for r in runs})
    if len(sizes) >= 2:
        marginal = {}
        for route in (args.route, const):
            a, b = ([r for r in runs if r["route"] == route and r["gvox"] == g][0] for g in (sizes[0], sizes[-1]))
            rate = (b["voxels"] - a["voxels"]) / (b["wall_s"] - a["wall_s"]) / 1e6
            fixed = a["wall_s"] - a["voxels"] / (rate * 1e6)
            marginal[route] = {"marginal_mvox_s": rate, "fixed_s": fixed,
                               "fraction_of_network_alone": rate / result["network_alone_mvox_s"]}
        result["marginal"] = marginal
        save("marginal")
    for run in runs + ([result["io_threads_run"]] if "io_threads_run" in result else []):
        run["engine_fraction_of_network_alone"] = (run["engine_mvox_s"] or 0) / result["network_alone_mvox_s"]
        run["end_to_end_fraction_of_network_alone"] = (run["end_to_end_mvox_s"] or 0) / result["network_alone_mvox_s"]
    save("runs")


if __name__ == "__main__":
    main()

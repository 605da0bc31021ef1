"""Gigavoxel throughput of blockwise prediction, against MONAI's sliding window and the machine's peak.

Full run as measured in docs/BENCHMARKS.md (1 GVox in 30.5 min on the 2-core AVX2 machine with
whole-slice windows, the frozen network and two torch threads in one process; 34.1 min with
``--workers 2 --threads 1``; with 512 x 512 windows it takes about twice as long):

    PYTHONPATH=src .venv/bin/python benchmarks/throughput.py --gvox 1.0 --workers 0 --threads 2 \
        --window 768 1024 --jit --model RUN_DIR

Without --model it trains the default unet2d first (--train-minutes).

Smoke test (well under a minute):

    PYTHONPATH=src .venv/bin/python benchmarks/throughput.py --gvox 0.005 --train-minutes 0.05 \
        --features 4,8 --monai-slices 1 --agreement-slices 1 --agreement-crop 128 --matmul-seconds 0.5 --workers 0,2

Steps, all in one run:

1. a volume of ``--gvox`` gigavoxels built by mirror-tiling the real EPFL FIB-SEM stack
   (``../shared/data/epfl-multiclass/train_raw.tif``, 27 x 768 x 1024) along z, written
   to a chunked zarr;
2. ``emseg predict MODEL volume.zarr labels.zarr --workers N`` for each N of ``--workers``
   (default 1 and 2), as a subprocess: end-to-end MVox/s (wall clock, start-up included)
   and the peak RSS of the whole process tree (Dask workers included, polled with psutil);
   the label stores of all runs are compared;
3. MONAI ``sliding_window_inference`` on the same model over ``--monai-slices`` slices held in
   memory (1 thread, and all threads), and emseg's own tiling on the same slices in process:
   ratios emseg / MONAI in MVox/s;
4. the model's FLOPs per slice (``torch.utils.flop_counter.FlopCounterMode``) and this
   machine's fp32 and bf16 matmul peak (GFLOP/s): the fraction of peak the prediction reaches;
5. label agreement of bf16 autocast vs fp32 on ``--agreement-slices`` slices.

With ``--route auto`` (issue 21) the end-to-end run is ``emseg predict --route auto`` (the tuner picks
precision, engine, layout, threads, window and batch on a probe; the route is read back from the store),
and the same run also measures, side by side:

6. the pipeline alone: ``emseg predict --route const-...`` end to end on the same volume (the network
   replaced by a constant, with the tuned route's window, batch and threads): read, normalise, tile,
   argmax, write;
7. in process, interleaved (``--repeats`` rounds of A B C D on the same ``--monai-slices`` slices):
   MONAI ``sliding_window_inference`` fp32 at 1 thread and at all threads, emseg's tuned route, and the
   network alone (the tuned route's forward passes only, no tiling or argmax).

    PYTHONPATH=src .venv/bin/python benchmarks/throughput.py --gvox 1.0 --workers 0 --route auto \
        --model RUN_DIR --out benchmarks/results/throughput_route.json

Writes benchmarks/results/throughput.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EPFL = ROOT / ".." / "shared" / "data" / "epfl-multiclass"
CLASSES = ["background", "membrane", "mitochondrion", "mitochondrial_boundary", "vesicle", "psd", "axon"]


def build_volume(path: Path, gvox: float, chunk_z: int, raw: np.ndarray | None = None) -> tuple[int, int, int]:
    """Mirror-tile the EPFL stack (or ``raw``) along z to ``gvox`` gigavoxels, written slab by slab to a zarr store."""
    import tifffile
    import zarr

    raw = tifffile.imread(EPFL / "train_raw.tif") if raw is None else raw
    n, y, x = raw.shape
    nz = max(1, math.ceil(gvox * 1e9 / (y * x)))
    period = 2 * n
    order = [z % period if z % period < n else period - 1 - z % period for z in range(nz)]
    arr = zarr.create_array(store=str(path), shape=(nz, y, x), chunks=(chunk_z, y, x), dtype=raw.dtype,
                            zarr_format=3, overwrite=True)
    for z0 in range(0, nz, chunk_z):
        arr[z0:z0 + chunk_z] = raw[order[z0:z0 + chunk_z]]
    return nz, y, x


def train_model(out: Path, minutes: float, features: list[int] | None) -> Path:
    import emseg

    model = {"name": "unet2d"} if features is None else {"name": "unet2d", "features": features}
    cfg = out / "train.yaml"
    cfg.write_text(json.dumps({
        "data": {"train": {"image": str(EPFL / "train_raw.tif"), "labels": str(EPFL / "train_labels.tif"),
                           "slices": "0:24"},
                 "val": {"image": str(EPFL / "train_raw.tif"), "labels": str(EPFL / "train_labels.tif"),
                         "slices": "24:27"},
                 "classes": CLASSES},
        "model": model,
        "training": {"max_minutes": minutes, "seed": 0, "iterations_per_epoch": 2 if minutes < 1 else 50,
                     "val_max_slices": 1 if minutes < 1 else None},
    }))
    return emseg.train(cfg, out / "run", progress=False).model_path


class TreeRss:
    """Peak resident memory of a process and all its descendants, polled in a thread."""

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_emseg(model: Path, volume: Path, out: Path, workers: int, extra: list[str], threads: int = 1,
              quiet: bool = True) -> dict:
    """``emseg predict`` in a child process: wall clock and peak RSS (and, with ``quiet=False``, its log as
    ``output``, on a wide console so that no line is wrapped)."""
    cmd = [sys.executable, "-c", "from emseg.cli import main; main()", "predict", str(model), str(volume), str(out),
           *(["--quiet"] if quiet else []), "--workers", str(workers), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "COLUMNS": "400"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    rss = TreeRss(proc.pid)
    output, _ = proc.communicate()
    wall = time.perf_counter() - start
    peak = rss.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"emseg predict failed ({proc.returncode}):\n{output.decode()[-3000:]}")
    run = {"workers": workers, "wall_s": wall, "peak_rss_gb": peak / 2**30}
    return run if quiet else {**run, "output": output.decode()}


def same_labels(a: Path, b: Path, step: int = 64) -> bool:
    import zarr

    x, y = zarr.open_array(str(a), mode="r"), zarr.open_array(str(b), mode="r")
    return x.shape == y.shape and all(np.array_equal(x[z:z + step], y[z:z + step]) for z in range(0, x.shape[0], step))


def matmul_peak(dtype, seconds: float, n: int = 2048) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    iters, start = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * n**3 * iters / elapsed / 1e9


def slice_flops(predictor, shape: tuple[int, int]) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, predictor.context_slices, *shape))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        predictor.model(x)
    return float(counter.get_total_flops())


def monai_rate(predictor, volume: np.ndarray, threads: int) -> float:
    """MVox/s of MONAI sliding_window_inference over slices in memory (same model, window, batch, Gaussian)."""
    import torch
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(threads)
    start = time.perf_counter()
    with torch.no_grad():
        for z in range(volume.shape[0]):
            x = torch.from_numpy(predictor.normalizer(volume[z]))[None, None]
            logits = sliding_window_inference(x, roi_size=predictor._roi(volume.shape[1:]),
                                              sw_batch_size=predictor.batch_size, predictor=predictor.model,
                                              overlap=0.25, mode="gaussian", padding_mode="reflect")
            torch.softmax(logits, 1).argmax(1)
    return volume.size / (time.perf_counter() - start) / 1e6


def emseg_inprocess_rate(predictor, volume: np.ndarray, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    predictor.predict_volume(volume)  # labels, as the engine makes them
    return volume.size / (time.perf_counter() - start) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gvox", type=float, default=1.0, help="volume size in gigavoxels")
    ap.add_argument("--model", type=Path, help="run directory or model.pt (default: train unet2d first)")
    ap.add_argument("--train-minutes", type=float, default=15.0)
    ap.add_argument("--features", help="unet2d features when training, e.g. 4,8 for a smoke test (default: the default)")
    ap.add_argument("--workers", default="1,2", help="comma-separated --workers values to run")
    ap.add_argument("--threads", type=int, help="emseg predict --threads (torch threads per block; default 1)")
    ap.add_argument("--block", type=int, nargs=3, help="block shape Z Y X (default: emseg's choice)")
    ap.add_argument("--window", type=int, nargs=2, help="sliding window Y X for emseg and MONAI (default: the model's, "
                                                        "512 x 512; the whole slice, 768 1024, avoids overlap work)")
    ap.add_argument("--jit", action="store_true",
                    help="emseg predict --jit (frozen TorchScript network on CPU); the in-process rates are then "
                         "measured with and without it")
    ap.add_argument("--flat-gvox", type=float, default=0.0,
                    help="also run --workers 0 on volumes of this size and 4x: peak RSS vs size (memory flatness)")
    ap.add_argument("--monai-slices", type=int, default=8)
    ap.add_argument("--agreement-slices", type=int, default=2)
    ap.add_argument("--agreement-crop", type=int, default=0, help="crop agreement slices to N x N (0: whole slices)")
    ap.add_argument("--matmul-seconds", type=float, default=5.0)
    ap.add_argument("--route", help="emseg predict --route (e.g. auto): the tuned route, the pipeline alone "
                                     "(constant network) and the network alone are then measured too")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the in-process rates (--route)")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary folder, removed)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "throughput.json")
    args = ap.parse_args()

    import psutil
    import torch

    from emseg._device import cpu_has_native_bf16
    from emseg.inference import Predictor

    work = args.work or Path(tempfile.mkdtemp(prefix="emseg-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                "memory_gb": psutil.virtual_memory().total / 2**30,
                                "native_bf16": cpu_has_native_bf16(), "cuda": torch.cuda.is_available()}}
    try:
        t0 = time.perf_counter()
        shape = build_volume(work / "volume.zarr", args.gvox, chunk_z=8)
        nvox = int(np.prod(shape))
        result["volume"] = {"shape": list(shape), "gvox": nvox / 1e9, "build_s": time.perf_counter() - t0,
                            "source": "EPFL train_raw.tif mirror-tiled along z"}
        model = args.model
        if model is None:
            features = [int(f) for f in args.features.split(",")] if args.features else None
            t0 = time.perf_counter()
            model = train_model(work, args.train_minutes, features)
            result["training_s"] = time.perf_counter() - t0
        result["model"] = str(model)
        result["window"] = list(args.window) if args.window else "model default"

        runs, outputs = [], []
        extra = ["--block", *map(str, args.block)] if args.block else []
        window = {"window": tuple(args.window)} if args.window else {}
        if args.window:
            extra += ["--window", *map(str, args.window)]
        if args.jit:
            extra += ["--jit"]
        if args.threads:
            extra += ["--threads", str(args.threads)]
        if args.route:
            extra += ["--route", args.route]
        result["jit"] = bool(args.jit)
        result["threads_per_block"] = args.threads or 1
        for workers in [int(w) for w in args.workers.split(",")]:
            out = work / f"labels_w{workers}.zarr"
            run = run_emseg(model, work / "volume.zarr", out, workers, extra, threads=args.threads or 1)
            run["mvox_s"] = nvox / run["wall_s"] / 1e6
            meta = json.loads((out / "zarr.json").read_text())["attributes"]["emseg"]
            run["block_shape"], run["status"] = meta["block_shape"], meta["status"]
            runs.append(run)
            outputs.append(out)
            print(f"--workers {workers} --threads {args.threads or 1}: {run['wall_s']:.1f} s, {run['mvox_s']:.2f} MVox/s, "
                  f"peak RSS {run['peak_rss_gb']:.2f} GB", flush=True)
        result["emseg"] = runs
        if args.flat_gvox:
            small = build_volume(work / "small.zarr", args.flat_gvox, chunk_z=8)
            large = build_volume(work / "large.zarr", 4 * args.flat_gvox, chunk_z=8)
            flat = []
            for name, vol, size in (("small", work / "small.zarr", small), ("large", work / "large.zarr", large)):
                run = run_emseg(model, vol, work / f"flat_{name}.zarr", 0, extra)
                run.update(gvox=float(np.prod(size)) / 1e9)
                flat.append(run)
                print(f"--workers 0 on {run['gvox']:.3f} GVox: peak RSS {run['peak_rss_gb']:.2f} GB", flush=True)
            result["memory_flatness"] = flat
        result["identical_across_workers"] = all(same_labels(outputs[0], o) for o in outputs[1:])
        if args.route:
            result["route"] = route_measurements(args, model, work, outputs[0], nvox, runs[0])

        import zarr

        predictor = Predictor.from_checkpoint(model, overlap="auto", precision="fp32", **window)
        sub = np.asarray(zarr.open_array(str(work / "volume.zarr"), mode="r")[:args.monai_slices])
        cores = os.cpu_count() or 1
        result["overlap_auto"] = predictor.overlap
        result["receptive_radius_px"] = predictor.receptive_radius()
        if args.route:  # measured interleaved above; the tuned route's in-process rate stands for emseg's
            ip = result["route"]["in_process"]
            result["monai"] = {"slices": int(sub.shape[0]), "overlap": 0.25,
                               "mvox_s_1_thread": ip["monai_fp32_1_thread"]["best"],
                               f"mvox_s_{cores}_threads": ip[f"monai_fp32_{cores}_threads"]["best"]}
            result["emseg_in_process"] = {"mvox_s_1_thread": ip["emseg_tuned_in_process"]["best"],
                                          "note": "tuned route, its own thread count"}
        else:
            result["monai"] = {"slices": int(sub.shape[0]), "overlap": 0.25,
                               "mvox_s_1_thread": monai_rate(predictor, sub, 1),
                               f"mvox_s_{cores}_threads": monai_rate(predictor, sub, cores)}
            result["emseg_in_process"] = {"mvox_s_1_thread": emseg_inprocess_rate(predictor, sub, 1),
                                          f"mvox_s_{cores}_threads": emseg_inprocess_rate(predictor, sub, cores)}
        if args.jit:
            pjit = Predictor.from_checkpoint(model, overlap="auto", precision="fp32", jit=True, **window)
            pjit.predict_proba_slice(np.asarray(sub[0]))  # set-up (trace, freeze, check) outside the timing
            result["emseg_in_process_jit"] = {"mvox_s_1_thread": emseg_inprocess_rate(pjit, sub, 1),
                                              f"mvox_s_{cores}_threads": emseg_inprocess_rate(pjit, sub, cores),
                                              "still_jit": pjit.jit}
        best = max(runs, key=lambda r: r["mvox_s"])
        result["ratio_emseg_vs_monai"] = {
            "end_to_end_best_vs_monai_best": best["mvox_s"] / max(result["monai"]["mvox_s_1_thread"],
                                                                 result["monai"][f"mvox_s_{cores}_threads"]),
            "in_process_1_thread": result["emseg_in_process"]["mvox_s_1_thread"] / result["monai"]["mvox_s_1_thread"],
        }
        if args.jit:
            result["ratio_emseg_vs_monai"]["in_process_1_thread_jit"] = (
                result["emseg_in_process_jit"]["mvox_s_1_thread"] / result["monai"]["mvox_s_1_thread"])

        torch.set_num_threads(cores)
        flops = slice_flops(predictor, shape[1:])
        peak32 = matmul_peak(torch.float32, args.matmul_seconds)
        peak16 = matmul_peak(torch.bfloat16, args.matmul_seconds, n=1024 if not cpu_has_native_bf16() else 2048)
        achieved = flops * shape[0] / best["wall_s"] / 1e9
        in_process = flops * sub.shape[0] / (sub.size / result["emseg_in_process"]["mvox_s_1_thread"] / 1e6) / 1e9
        result["flops"] = {"per_slice_gflop": flops / 1e9, "achieved_gflop_s": achieved,
                           "in_process_1_thread_gflop_s": in_process,
                           "matmul_fp32_gflop_s": peak32, "matmul_bf16_gflop_s": peak16,
                           "fraction_of_fp32_peak": achieved / peak32, "fraction_of_bf16_peak": achieved / peak16}

        torch.set_num_threads(cores)
        zs = np.linspace(0, shape[0] - 1, args.agreement_slices).astype(int)
        agree = []
        p16 = Predictor.from_checkpoint(model, overlap="auto", precision="bf16", **window)
        for z in zs:
            image = np.asarray(sub[min(z, sub.shape[0] - 1)])
            if args.agreement_crop:
                image = image[:args.agreement_crop, :args.agreement_crop]
            t0 = time.perf_counter()
            a = predictor.predict_proba_slice(image).argmax(0)
            t32 = time.perf_counter() - t0
            t0 = time.perf_counter()
            b = p16.predict_proba_slice(image).argmax(0)
            t16 = time.perf_counter() - t0
            agree.append({"slice": int(z), "identical_fraction": float((a == b).mean()), "fp32_s": t32, "bf16_s": t16})
        result["bf16_vs_fp32"] = agree
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"\nwritten {args.out}")


def route_measurements(args, model: Path, work: Path, tuned_out: Path, nvox: int, tuned_run: dict) -> dict:
    """Pipeline alone (constant network, end to end), then MONAI / emseg tuned / network alone, interleaved."""
    import dataclasses

    import torch
    import zarr

    from emseg.inference import Predictor, Route, read_run_metadata
    from emseg.inference._route import route_overlap
    from emseg.inference._tiling import window_batches

    record = read_run_metadata(tuned_out)["route"]
    out = {"record": record, "tuned_end_to_end": tuned_run}
    tuned = Route.parse(record["name"]) if record.get("name") else Route("fp32", threads=1)
    const = dataclasses.replace(tuned, precision="const", jit=False, channels_last=False, compiled=False)
    run = run_emseg(model, work / "volume.zarr", work / "labels_const.zarr", 0, ["--route", const.name],
                    threads=const.threads)
    run.update(route=const.name, mvox_s=nvox / run["wall_s"] / 1e6)
    labels = zarr.open_array(str(work / "labels_const.zarr"), mode="r")
    run["all_constant_label"] = bool(np.all(labels[:8] == len(read_run_metadata(tuned_out)["classes"]) - 1))
    out["pipeline_end_to_end"] = run
    print(f"pipeline alone ({const.name}): {run['mvox_s']:.2f} MVox/s, peak RSS {run['peak_rss_gb']:.2f} GB",
          flush=True)

    sub = np.asarray(zarr.open_array(str(work / "volume.zarr"), mode="r")[:args.monai_slices])
    base = Predictor.from_checkpoint(model, precision="fp32")
    options = {**tuned.predictor_options(),
               "overlap": route_overlap(base.receptive_radius(), tuned.window or base.window)}
    emseg_p = Predictor.from_checkpoint(model, **options)
    if tuned.precision == "int8":
        box = record["probe"]
        emseg_p.calibrate_int8(np.asarray(zarr.open_array(str(work / "volume.zarr"), mode="r")[box["z"]]))
    cores = os.cpu_count() or 1

    step = emseg_p.slices_per_forward(sub.shape[1:])  # > 1: several whole-slice windows per forward (bN)

    def network_alone() -> float:
        torch.set_num_threads(tuned.threads)
        roi = emseg_p._roi(sub.shape[1:])
        seconds = 0.0
        with torch.no_grad():
            if step > 1:  # batches of whole slices, as the route runs them
                for z0 in range(0, sub.shape[0], step):
                    xs = [emseg_p._input(sub[z]) for z in range(z0, min(z0 + step, sub.shape[0]))]
                    pad = [(0, 0)] + [(0, max(0, r - s)) for r, s in zip(roi, xs[0].shape[1:])]
                    batch = torch.from_numpy(np.stack([np.pad(x, pad, mode="reflect") if any(p for _, p in pad)
                                                       else x for x in xs]))
                    t0 = time.perf_counter()
                    emseg_p._forward(batch)
                    seconds += time.perf_counter() - t0
            for z in range(sub.shape[0] if step == 1 else 0):
                x = emseg_p._input(sub[z])
                pad = [(0, 0)] + [(0, max(0, r - s)) for r, s in zip(roi, x.shape[1:])]
                x = np.pad(x, pad, mode="reflect") if any(p for _, p in pad) else x
                for chunk in window_batches(x.shape[1:], roi, emseg_p.overlap, emseg_p.batch_size):
                    batch = torch.from_numpy(np.stack([x[:, y:y + roi[0], xx:xx + roi[1]] for y, xx in chunk]))
                    t0 = time.perf_counter()
                    emseg_p._forward(batch)
                    seconds += time.perf_counter() - t0
        return sub.size / seconds / 1e6

    def emseg_tuned() -> float:
        torch.set_num_threads(tuned.threads)
        t0 = time.perf_counter()
        emseg_p.predict_volume(sub)
        return sub.size / (time.perf_counter() - t0) / 1e6

    emseg_p.predict_labels_stack(sub)  # set-up (jit trace, compile, oneDNN primitives) outside the timing
    contenders = {"monai_fp32_1_thread": lambda: monai_rate(base, sub, 1),
                  f"monai_fp32_{cores}_threads": lambda: monai_rate(base, sub, cores),
                  "emseg_tuned_in_process": emseg_tuned, "network_alone": network_alone}
    rounds: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.repeats):  # A B C D A B C D ...: the shared machine's load hits all alike
        for key, fn in contenders.items():
            rounds[key].append(fn())
            print(f"  {key}: {rounds[key][-1]:.3f} MVox/s", flush=True)
    out["in_process"] = {k: {"runs": v, "best": max(v)} for k, v in rounds.items()}
    monai_best = max(out["in_process"]["monai_fp32_1_thread"]["best"],
                     out["in_process"][f"monai_fp32_{cores}_threads"]["best"])
    net = out["in_process"]["network_alone"]["best"]
    out["ratios"] = {"tuned_end_to_end_vs_monai_best": tuned_run["mvox_s"] / monai_best,
                     "tuned_in_process_vs_monai_best": out["in_process"]["emseg_tuned_in_process"]["best"] / monai_best,
                     "pipeline_vs_network": run["mvox_s"] / net,
                     "tuned_end_to_end_vs_network": tuned_run["mvox_s"] / net}
    return out


def print_route(r: dict) -> None:
    print(f"\ntuned route: {r['record'].get('name')} (probe: {r['record'].get('mvox_s') or 0:.2f} MVox/s, "
          f"agreement {100 * (r['record'].get('agreement') or 1):.2f} %, tuning {r['record'].get('tuning_s', 0):.1f} s)")
    for c in r["record"].get("candidates", []):
        if "mvox_s" in c:
            print(f"  candidate {c['name']:<36}{c['mvox_s']:>8.2f} MVox/s  agreement {100 * c['agreement']:.2f} %"
                  f"  slices {c.get('slices', 1)}  set-up {c.get('setup_s', 0):.1f} s"
                  + ("" if c.get("repaid", True) else "  (set-up not repaid)"))
    print(f"tuned end to end {r['tuned_end_to_end']['mvox_s']:.2f} MVox/s, peak RSS "
          f"{r['tuned_end_to_end']['peak_rss_gb']:.2f} GB; pipeline alone {r['pipeline_end_to_end']['mvox_s']:.2f} "
          f"MVox/s (constant labels: {r['pipeline_end_to_end']['all_constant_label']}), peak RSS "
          f"{r['pipeline_end_to_end']['peak_rss_gb']:.2f} GB")
    for key, v in r["in_process"].items():
        print(f"  in process {key:<28} best {v['best']:.3f} MVox/s  runs " + " ".join(f"{x:.3f}" for x in v["runs"]))
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items()))


def print_table(r: dict) -> None:
    v = r["volume"]
    print(f"\nvolume {tuple(v['shape'])} = {v['gvox']:.3f} GVox; model {r['model']}; "
          f"auto overlap {r['overlap_auto']:.3f} (receptive radius {r['receptive_radius_px']} px)")
    print(f"{'route':<34}{'MVox/s':>10}{'wall s':>10}{'peak RSS GB':>13}")
    for run in r["emseg"]:
        print(f"{'emseg predict --workers ' + str(run['workers']) + ' --threads ' + str(r.get('threads_per_block', 1)):<34}{run['mvox_s']:>10.2f}{run['wall_s']:>10.1f}"
              f"{run['peak_rss_gb']:>13.2f}")
    for key, val in r["monai"].items():
        if key.startswith("mvox_s"):
            print(f"{'MONAI sliding window, ' + key[7:]:<34}{val:>10.2f}")
    for name, label in (("emseg_in_process", "emseg tiling in process, "), ("emseg_in_process_jit", "emseg --jit in process, ")):
        for key, val in r.get(name, {}).items():
            if key.startswith("mvox_s"):
                print(f"{label + key[7:]:<34}{val:>10.2f}")
    print(f"identical labels across --workers: {r['identical_across_workers']}")
    for run in r.get("memory_flatness", []):
        print(f"memory flatness, --workers 0 on {run['gvox']:.3f} GVox: peak RSS {run['peak_rss_gb']:.2f} GB "
              f"({run['wall_s']:.0f} s)")
    print("emseg / MONAI: " + ", ".join(f"{k} {v:.2f}" for k, v in r["ratio_emseg_vs_monai"].items()))
    f = r["flops"]
    print(f"model {f['per_slice_gflop']:.1f} GFLOP/slice; achieved {f['achieved_gflop_s']:.1f} GFLOP/s = "
          f"{100 * f['fraction_of_fp32_peak']:.1f} % of fp32 matmul peak ({f['matmul_fp32_gflop_s']:.0f} GFLOP/s), "
          f"{100 * f['fraction_of_bf16_peak']:.1f} % of bf16 peak ({f['matmul_bf16_gflop_s']:.2g} GFLOP/s); "
          f"one thread in process: {f['in_process_1_thread_gflop_s']:.1f} GFLOP/s")
    if "route" in r:
        print_route(r["route"])
    for a in r["bf16_vs_fp32"]:
        print(f"bf16 vs fp32, slice {a['slice']}: {100 * a['identical_fraction']:.2f} % identical labels "
              f"(fp32 {a['fp32_s']:.1f} s, bf16 {a['bf16_s']:.1f} s)")


if __name__ == "__main__":
    main()

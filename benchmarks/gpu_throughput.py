"""Blockwise prediction on a CUDA GPU: end-to-end GVox rate, bf16 vs fp32 labels, MONAI ratio, fraction of peak.

The GPU counterpart of benchmarks/throughput.py, written for a lent GPU machine
with a bounded time budget (one call of a few minutes). Every GPU figure of issue 21 in one command:

    PYTHONPATH=src python benchmarks/gpu_throughput.py --model MODEL_DIR --raw train_raw.npy --gvox 1.0 \\
        --route auto --out $OUT/gpu_throughput.json

``--raw`` is the EPFL stack (``../shared/data/epfl-multiclass/train_raw.tif``, or a
``.npy`` copy of it), mirror-tiled along z into a chunked zarr of ``--gvox`` GVox.

Steps, each result written to ``--out`` as soon as it exists:

1. in process, on ``--slices`` slices held in memory: the network alone (a batch of
   windows, forward only) and emseg's tiled prediction (labels, as the engine makes
   them, and probabilities then an argmax on the host), for bf16 autocast and fp32,
   whole-slice and default windows; MONAI ``sliding_window_inference`` on the same
   slices and model (bf16): emseg / MONAI in MVox/s;
2. ``emseg predict MODEL volume.zarr labels.zarr`` (one process, the GPU) end to end,
   bf16 then fp32: wall clock, MVox/s and peak RSS of the process; the fraction of
   identical labels between the two over the whole volume;
3. ``emseg predict --route ROUTE`` (default ``auto``: the tuner, bf16 and several slices per forward
   among its candidates) end to end: its rate as a fraction of the network alone (whole slices, bf16,
   ``--batch-size`` per forward) and the route it chose; one ``emseg predict`` over ``--batch-volumes``
   links to the volume (a pattern input: start-up and tuning paid once), end to end over all of them,
   as a fraction of the network alone too; then the same route with the network replaced
   by a constant (the pipeline alone on this machine), and a cProfile of the route on ``--profile-gvox``;
4. labels of every end-to-end run against the CPU fp32 route (the default CPU route with the model's
   window, and the CPU fp32 route with the whole-slice window of the runs above, computed here on
   ``--cpu-slices`` slices spread over the volume): the fraction of identical voxels (target >= 99.5 %);
5. the model's FLOPs per slice and the GPU's measured bf16 matmul rate: the fraction
   of peak the end-to-end run reaches.

In process also: whole slices, bf16, 1 / 4 / 8 / 16 slices per forward pass (``slices_per_forward``);
labels argmax'ed on the device against probabilities copied back and argmax'ed on the host.  Batches
go to the GPU through pinned host memory with non-blocking copies (``Predictor._run``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import build_volume, run_emseg, slice_flops  # noqa: E402


DEVICE = "cuda"  # --device cpu: a smoke test of this script on a machine without a GPU


def _sync():
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def network_rate(model, window, batch, dtype, seconds: float = 3.0, *, channels: int = 1,
                 channels_last: bool = False) -> float:
    """MVox/s of the bare network: forward passes of ``batch`` random windows (no tiling, no transfers)."""
    import torch

    x = torch.randn((batch, channels, *window), device=DEVICE)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(DEVICE, dtype=dtype, enabled=dtype is not None):
        for _ in range(3):
            model(x)
        _sync()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            n += 1
        _sync()
    return n * x.numel() / (time.perf_counter() - start) / 1e6


def tiled_rate(predictor, sub: np.ndarray, labels: bool = True) -> float:
    """MVox/s of emseg's in-memory labels (``predict_volume``: argmax where the network ran), or of
    probabilities then a host argmax (``labels=False``)."""
    predictor.predict_proba_slice(sub[0])  # warm-up: cuDNN algorithm choice, Gaussian cache
    _sync()
    start = time.perf_counter()
    if labels:
        predictor.predict_volume(sub)
    else:
        predictor.predict_proba_volume(sub).argmax(0)
    _sync()
    return sub.size / (time.perf_counter() - start) / 1e6


def monai_rate(predictor, sub: np.ndarray, dtype) -> float:
    import torch
    from monai.inferers import sliding_window_inference

    def one(z):
        x = torch.from_numpy(predictor.normalizer(sub[z]))[None, None].to(DEVICE)
        with torch.autocast(DEVICE, dtype=dtype, enabled=dtype is not None):
            logits = sliding_window_inference(x, roi_size=predictor._roi(sub.shape[1:]),
                                              sw_batch_size=predictor.batch_size, predictor=predictor.model,
                                              overlap=predictor.overlap, mode="gaussian", padding_mode="reflect")
        return torch.softmax(logits.float(), 1).argmax(1).cpu().numpy()

    with torch.no_grad():
        one(0)
        _sync()
        start = time.perf_counter()
        for z in range(sub.shape[0]):
            one(z)
        _sync()
    return sub.size / (time.perf_counter() - start) / 1e6


def matmul_peak_cuda(dtype, n: int = 8192, iters: int = 20) -> float:
    import torch

    a, b = torch.randn(n, n, device=DEVICE, dtype=dtype), torch.randn(n, n, device=DEVICE, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync()
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def identical_fraction(a: Path, b: Path, step: int = 64) -> float:
    import zarr

    x, y = zarr.open_array(str(a), mode="r"), zarr.open_array(str(b), mode="r")
    same = sum(int((x[z:z + step] == y[z:z + step]).sum()) for z in range(0, x.shape[0], step))
    return same / float(np.prod(x.shape))


def profile_route(model: Path, volume: Path, out: Path, route: str, text: Path) -> dict:
    """``emseg predict --route ROUTE`` under cProfile: wall time and the 25 functions of most cumulative time
    (written to ``text``)."""
    import subprocess

    stats = out.with_suffix(".prof")
    code = ("import cProfile, sys; from emseg.cli import main; "
            f"sys.argv = ['emseg', 'predict', {str(model)!r}, {str(volume)!r}, {str(out)!r}, '--quiet', "
            f"'--workers', '0', '--route', {route!r}]; cProfile.run('main()', {str(stats)!r})")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "wall_s": wall}
    import io
    import pstats

    buffer = io.StringIO()
    pstats.Stats(str(stats), stream=buffer).sort_stats("cumulative").print_stats(40)
    buffer.write("\n\n")
    pstats.Stats(str(stats), stream=buffer).sort_stats("tottime").print_stats(25)
    text.parent.mkdir(parents=True, exist_ok=True)
    text.write_text(buffer.getvalue())
    return {"route": route, "wall_s": wall, "stats": str(text)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--raw", type=Path, required=True, help="EPFL train_raw.tif or a .npy copy")
    ap.add_argument("--gvox", type=float, default=1.0)
    ap.add_argument("--slices", type=int, default=16, help="slices held in memory for the in-process rates")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per forward pass, end to end")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--route", default="auto",
                    help="also run emseg predict --route ROUTE end to end (issue 21; default auto, '' to skip): its "
                         "rate is compared with the network alone and its labels with the fp32 runs")
    ap.add_argument("--cpu-slices", type=int, default=4,
                    help="slices predicted by the CPU fp32 route, the reference of the labels agreement")
    ap.add_argument("--profile-gvox", type=float, default=0.1,
                    help="also profile the tuned route on a volume of this size (0: no profile)")
    ap.add_argument("--batch-volumes", type=int, default=4,
                    help="also one emseg predict over this many copies (links) of the volume, end to end: the "
                    "start-up paid once (0 or 1 to skip)")
    ap.add_argument("--device", default="cuda", help="cpu: a quick smoke test of this script without a GPU")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device

    import psutil
    import tifffile
    import torch

    from emseg.inference import Predictor

    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (--device cpu only smoke-tests the script)")
    device = torch.device(DEVICE)
    gpu = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "none (cpu smoke test)"
    result: dict = {"machine": {"gpu": gpu, "torch": torch.__version__,
                                "cpu_cores": psutil.cpu_count(), "memory_gb": psutil.virtual_memory().total / 2**30}}

    def save(step: str) -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"[{time.strftime('%H:%M:%S')}] {step}: {json.dumps(result.get(step), default=str)[:600]}", flush=True)

    save("machine")
    raw = np.load(args.raw) if args.raw.suffix == ".npy" else tifffile.imread(args.raw)
    bf16, fp32 = torch.bfloat16, None

    # 1. in process
    whole = tuple(raw.shape[1:])
    sub = np.asarray(raw[:args.slices])
    rates = {}
    for label, window in (("whole_slice", whole), ("default_window", None)):
        kw = {"window": window} if window else {}
        for pname, dtype in (("bf16", bf16), ("fp32", fp32)):
            p = Predictor.from_checkpoint(args.model, overlap="auto", precision=pname, batch_size=args.batch_size,
                                          device=device, **kw)
            if DEVICE == "cuda":
                torch.cuda.reset_peak_memory_stats()
            rates[f"tiled_{label}_{pname}"] = tiled_rate(p, sub)
            rates[f"tiled_probabilities_{label}_{pname}"] = tiled_rate(p, sub, labels=False)
            if DEVICE == "cuda":
                rates[f"gpu_mem_gb_{label}_{pname}"] = torch.cuda.max_memory_allocated() / 2**30
            roi = p._roi(whole)
            rates[f"network_{label}_{pname}_batch{args.batch_size}"] = network_rate(p.model, roi, args.batch_size,
                                                                                    dtype)
            if label == "default_window":
                rates["overlap_auto"] = p.overlap
                rates[f"monai_{label}_{pname}"] = monai_rate(p, sub, dtype)
        result["in_process"] = rates
        save("in_process")
    for per_forward in (1, 4, 8, 16):  # several whole slices per forward pass (route bN with a whole-slice window)
        p = Predictor.from_checkpoint(args.model, overlap="auto", precision="bf16", batch_size=per_forward,
                                      device=device, window=whole)
        rates[f"tiled_whole_slice_bf16_{p.slices_per_forward(whole)}_slices_per_forward"] = tiled_rate(p, sub)
    save("in_process")
    rates["emseg_vs_monai_bf16"] = rates["tiled_default_window_bf16"] / rates["monai_default_window_bf16"]
    rates["emseg_vs_monai_fp32"] = rates["tiled_default_window_fp32"] / rates["monai_default_window_fp32"]
    save("in_process")

    # 2. end to end
    work = args.work or Path(tempfile.mkdtemp(prefix="emseg-gpu-"))
    t0 = time.perf_counter()
    shape = build_volume(work / "volume.zarr", args.gvox, chunk_z=8, raw=raw)
    nvox = int(np.prod(shape))
    result["volume"] = {"shape": list(shape), "gvox": nvox / 1e9, "build_s": time.perf_counter() - t0}
    save("volume")
    runs = []
    for pname in ("bf16", "fp32"):
        out = work / f"labels_{pname}.zarr"
        run = run_emseg(args.model, work / "volume.zarr", out, 0,
                        ["--precision", pname, "--window", *map(str, whole), "--batch-size", str(args.batch_size)])
        run.update(precision=pname, mvox_s=nvox / run["wall_s"] / 1e6, gvox_per_hour=nvox / run["wall_s"] * 3600 / 1e9)
        meta = json.loads((out / "zarr.json").read_text())["attributes"]["emseg"]
        run["block_shape"], run["status"] = meta["block_shape"], meta["status"]
        runs.append(run)
        result["end_to_end"] = runs
        save("end_to_end")
    result["bf16_vs_fp32_identical_fraction"] = identical_fraction(work / "labels_bf16.zarr", work / "labels_fp32.zarr")
    save("bf16_vs_fp32_identical_fraction")
    if args.route:  # issue 21: the tuned route end to end, vs the network alone and vs the fp32 labels
        out = work / "labels_route.zarr"
        run = run_emseg(args.model, work / "volume.zarr", out, 0, ["--route", args.route])
        run.update(mvox_s=nvox / run["wall_s"] / 1e6,
                   route=json.loads((out / "zarr.json").read_text())["attributes"]["emseg"]["route"],
                   identical_to_fp32=identical_fraction(out, work / "labels_fp32.zarr"))
        network = rates[f"network_whole_slice_bf16_batch{args.batch_size}"]
        run["fraction_of_network_alone"] = run["mvox_s"] / network
        result["route_end_to_end"] = run
        save("route_end_to_end")
        if args.batch_volumes > 1:  # one process for several volumes: start-up and tuning paid once (a pattern)
            many = work / "many"
            many.mkdir(exist_ok=True)
            for i in range(args.batch_volumes):
                if not (many / f"v{i}.zarr").exists():
                    (many / f"v{i}.zarr").symlink_to(work / "volume.zarr")
            batch = run_emseg(args.model, many / "*.zarr", work / "labels_many" / "{stem}.zarr", 0,
                              ["--route", args.route])
            total = nvox * args.batch_volumes
            batch.update(volumes=args.batch_volumes, gvox=total / 1e9, mvox_s=total / batch["wall_s"] / 1e6,
                         fraction_of_network_alone=total / batch["wall_s"] / 1e6 / network,
                         first_identical_to_route=identical_fraction(work / "labels_many" / "v0.zarr", out))
            result["batch_end_to_end"] = batch
            save("batch_end_to_end")
        # the pipeline alone on this machine: the tuned route with its network replaced by a constant (read,
        # normalise, copy to the device, argmax there, copy back, write), so a shortfall is placed on either side
        import dataclasses

        from emseg.inference import Route

        tuned = Route.parse(run["route"]["name"])
        const = dataclasses.replace(tuned, precision="const", jit=False, channels_last=False, compiled=False)
        out_const = work / "labels_const.zarr"
        pipe = run_emseg(args.model, work / "volume.zarr", out_const, 0, ["--route", const.name])
        pipe.update(route=const.name, mvox_s=nvox / pipe["wall_s"] / 1e6,
                    fraction_of_network_alone=nvox / pipe["wall_s"] / 1e6 / network)
        result["pipeline_alone_end_to_end"] = pipe
        save("pipeline_alone_end_to_end")
        if args.profile_gvox:  # where the host's time goes in the tuned route (cProfile of the main thread)
            small = work / "volume_small.zarr"
            build_volume(small, args.profile_gvox, chunk_z=8, raw=raw)
            result["profile"] = profile_route(args.model, small, work / "labels_profile.zarr", tuned.name,
                                              args.out.with_name("gpu_profile.txt"))
            save("profile")

    # 4. labels against the CPU fp32 route on a few slices spread over the volume
    import zarr

    volume = zarr.open_array(str(work / "volume.zarr"), mode="r")
    zs = sorted({int(z) for z in np.linspace(0, shape[0] - 1, args.cpu_slices)})
    stores = {f"end_to_end_{r['precision']}": work / f"labels_{r['precision']}.zarr" for r in runs}
    if args.route:
        stores["route"] = work / "labels_route.zarr"
    gpu_labels = {name: np.stack([zarr.open_array(str(path), mode="r")[z] for z in zs]) for name, path in stores.items()}
    result["vs_cpu_fp32"] = {"slices": zs}
    # the default CPU route (fp32, eager, the model's window), and the CPU fp32 route with the whole-slice window
    # of the end-to-end runs above (which separates the device and precision from the window)
    for ref_name, kw in (("cpu_fp32_model_window", {}), ("cpu_fp32_whole_slice", {"window": whole})):
        cpu = Predictor.from_checkpoint(args.model, overlap="auto", precision="fp32", device=torch.device("cpu"), **kw)
        reference = np.stack([cpu.predict_labels_slice(np.asarray(volume[z])) for z in zs])
        result["vs_cpu_fp32"][ref_name] = {name: float(np.mean(labels == reference))
                                           for name, labels in gpu_labels.items()}
    save("vs_cpu_fp32")

    # 5. fraction of peak
    cpu = Predictor.from_checkpoint(args.model, overlap="auto", precision="fp32", device=torch.device("cpu"))
    flops = slice_flops(cpu, whole)
    peak = matmul_peak_cuda(torch.bfloat16, *(() if DEVICE == "cuda" else (512, 2)))
    best = max(runs, key=lambda r: r["mvox_s"])
    achieved = flops * shape[0] / best["wall_s"] / 1e12
    net = rates[f"network_whole_slice_bf16_batch{args.batch_size}"] * 1e6 / (whole[0] * whole[1]) * flops / 1e12
    result["flops"] = {"per_slice_gflop": flops / 1e9, "matmul_bf16_tflop_s": peak,
                       "end_to_end_tflop_s": achieved, "end_to_end_fraction_of_peak": achieved / peak,
                       "network_alone_bf16_tflop_s": net, "network_alone_fraction_of_peak": net / peak}
    save("flops")


if __name__ == "__main__":
    main()

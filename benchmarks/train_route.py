"""Training steps per second before and after the route probe and the prefetching batch worker.

One process, interleaved rounds (A B C A B C ...), real EPFL training slices,
the default network (``unet2d``, 32..512 features), batch 8 of 256 x 256, the
default loss and augmentation, Adam; each step is a whole optimiser step
*including* drawing and augmenting its batch:

* ``before``: what training did before issue 22: ``precision: auto`` (bf16 on a
  CPU with native bf16), contiguous memory, torch's default threads, batches
  drawn inline;
* ``route``: the route the probe picks (printed), batches inline;
* ``after``: the probe's route and ``training.prefetch: 2`` (batches drawn by the worker thread).

The same script measures the machine's fp32 and bf16 matmul GFLOP/s (2048^2
``torch.mm``, same threads) and counts the network's FLOPs per step (forward
from :func:`emseg.models.count_flops`, backward taken as twice the forward), so
it prints the fraction of the matmul peak that training reaches.

    python benchmarks/train_route.py --rounds 3 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from emseg._device import default_device, resolve_precision
from emseg.config import AugmentConfig, TrainingConfig
from emseg.data import BatchStream, Normalizer, PatchSampler, augment_batch
from emseg.losses import build_criterion
from emseg.models import build_model, count_flops
from emseg.training._route import Route, choose_route

EPFL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "epfl-multiclass"


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--features", default=None, help="e.g. 16,32,64,128 (default: the model's)")
    parser.add_argument("--augment", choices=["default", "heavy"], default="default",
                        help="heavy: + Simard elastic, rotation, zoom (a costly batch)")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the figures")
    args = parser.parse_args()
    device = default_device()
    raw = tifffile.imread(EPFL / "train_raw.tif")[:8]
    labels = tifffile.imread(EPFL / "train_labels.tif")[:8].astype(np.int16)
    normalizer = Normalizer.fit(list(raw))
    images = [normalizer(im)[None].astype(np.float32) for im in raw]
    augment = AugmentConfig() if args.augment == "default" else AugmentConfig(
        elastic="simard", rotation=20.0, zoom=[0.8, 1.25])
    options = {} if args.features is None else {"features": [int(f) for f in args.features.split(",")]}
    model = build_model("unet2d", in_channels=1, num_classes=7, options=options)
    tc = TrainingConfig()
    criterion = build_criterion(tc, num_classes=7, class_weights=None)
    shape = (args.batch, 1, args.patch, args.patch)
    with torch.device("meta"):
        flops_fwd = count_flops(build_model("unet2d", in_channels=1, num_classes=7, options=options), shape)
    flops_step = 3 * flops_fwd
    default_threads = torch.get_num_threads()
    peak = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    choice = choose_route(model, input_shape=shape, device=device, configured="auto", precision="auto",
                          num_threads=None, budget_s=30 * 60.0)
    print(choice.describe(), flush=True)
    auto = "bf16" if resolve_precision("auto", device) is not None else "fp32"  # precision: auto, as before
    before = Route(auto, channels_last=False, compile=False, threads=default_threads)
    variants = {"before": (before, 0), "route": (choice.route, 0), "after": (choice.route, 2)}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    streams = {}
    for name, (_, prefetch) in variants.items():
        rng = np.random.default_rng(0)
        sampler = PatchSampler(images, list(labels), patch_size=(args.patch, args.patch), num_classes=7, rng=rng)
        streams[name] = BatchStream(sampler, augment=augment_batch, config=augment, rng=rng, batch_size=args.batch,
                                    iterations_per_epoch=50, patch_shape=(args.patch, args.patch), prefetch=prefetch)
    times: dict[str, list[float]] = {name: [] for name in variants}

    def step(route: Route, stream: BatchStream) -> None:
        x, y, _ = stream.next()
        x = route.prepare_input(torch.from_numpy(x).to(device))
        with torch.autocast(device.type, dtype=route.dtype(device) or torch.float32,
                            enabled=route.dtype(device) is not None):
            logits = model(x)
        loss = criterion(logits, torch.from_numpy(y).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    load_before = os.getloadavg()
    for r in range(args.rounds):
        for name, (route, _) in variants.items():
            route.apply(model, 4)
            step(route, streams[name])  # warm-up after the switch (and the worker fills its queue)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(route, streams[name])
            times[name].append((time.perf_counter() - t0) / args.steps)
            print(f"round {r + 1} {name} ({route.name}, prefetch {variants[name][1]}): "
                  f"{1 / times[name][-1]:.3f} steps/s", flush=True)
    for stream in streams.values():
        stream.close()
    flags = open("/proc/cpuinfo").read()
    cpu = next(line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name"))
    result = {"cpu": cpu, "bf16_flags": sorted({f for f in ("avx512_bf16", "amx_bf16") if f in flags}),
              "cores": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
              "matmul_gflops": {k: round(v, 1) for k, v in peak.items()}, "probe": choice.to_dict(),
              "flops_per_step_g": round(flops_step / 1e9, 1), "batch": args.batch, "patch": args.patch,
              "augment": args.augment, "variants": {}}
    base = float(np.median(times["before"]))
    for name, (route, prefetch) in variants.items():
        med = float(np.median(times[name]))
        achieved = flops_step / med / 1e9
        result["variants"][name] = {
            "route": route.name, "prefetch": prefetch, "seconds_per_step": [round(t, 3) for t in times[name]],
            "steps_per_s": round(1 / med, 4), "speedup_vs_before": round(base / med, 3),
            "gflops": round(achieved, 1), "fraction_of_matmul_peak": round(achieved / peak[route.precision], 3)}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

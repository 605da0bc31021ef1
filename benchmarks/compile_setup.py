"""torch.compile set-up against eager, for a training step or for prediction, with the default unet2d.

Training (batch 8 of 256^2, bf16 autocast, Adam; docs/BENCHMARKS.md, "Training route"):

    PYTHONPATH=src .venv/bin/python benchmarks/compile_setup.py

Prediction (issue 21; one 768 x 1024 slice per forward, or ``--batch`` slices, 7 classes, no grad), for
each of ``--routes`` (fp32-nchw, bf16-cl: precision and layout), eager and compiled timed interleaved:

    PYTHONPATH=src .venv/bin/python benchmarks/compile_setup.py --predict --threads 2 --out benchmarks/results/compile_predict.json

Prints the eager time, the first compiled call (the set-up) and the compiled time; the prediction figures
are the reason the route tuner tries torch.compile only for large volumes
(``emseg.inference._route.COMPILE_SETUP_S`` / ``COMPILE_GAIN``).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from emseg.models import build_model


def training() -> None:
    torch.set_num_threads(2)
    model = build_model("unet2d", in_channels=1, num_classes=2, options={})
    optimizer = torch.optim.Adam(model.parameters())
    x, y = torch.randn(8, 1, 256, 256), torch.randint(0, 2, (8, 256, 256))

    def step(module: torch.nn.Module) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0

    for _ in range(2):
        step(model)
    print("eager bf16", sum(step(model) for _ in range(3)) / 3, flush=True)
    compiled = torch.compile(model)  # shares the weights with model
    print("compile first step", step(compiled), flush=True)
    print("compile 2nd", step(compiled), flush=True)
    print("compiled", sum(step(compiled) for _ in range(3)) / 3, flush=True)


def prediction(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    rows = []
    for route in args.routes.split(","):
        precision, layout = route.split("-")
        torch._dynamo.reset()
        model = build_model("unet2d", in_channels=1, num_classes=7, options={}).eval()
        x = torch.randn(args.batch, 1, *args.shape)
        if layout == "cl":
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = torch.bfloat16 if precision == "bf16" else None

        def call(module: torch.nn.Module) -> float:
            t0 = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                module(x).float().argmax(1)
            return time.perf_counter() - t0

        call(model)  # eager warm-up (oneDNN primitives)
        compiled = torch.compile(model)
        setup = call(compiled)
        eager, comp = [], []
        for _ in range(args.repeats):  # interleaved: eager, compiled, eager, compiled ...
            eager.append(call(model))
            comp.append(call(compiled))
        row = {"route": route, "first_compiled_call_s": setup, "eager_s": min(eager), "compiled_s": min(comp),
               "setup_s": setup - min(comp), "gain": min(eager) / min(comp), "eager_runs": eager, "compiled_runs": comp}
        rows.append(row)
        print(f"{route}: eager {row['eager_s']:.2f} s, first compiled call {setup:.1f} s (set-up {row['setup_s']:.1f} s), "
              f"compiled {row['compiled_s']:.2f} s: {row['gain']:.2f}x", flush=True)
    return {"shape": list(args.shape), "batch": args.batch, "threads": args.threads, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predict", action="store_true", help="prediction (forward, no grad) instead of a training step")
    ap.add_argument("--routes", default="fp32-nchw,bf16-cl", help="PRECISION-LAYOUT list (fp32/bf16, nchw/cl)")
    ap.add_argument("--shape", type=int, nargs=2, default=(768, 1024))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not args.predict:
        training()
        return
    result = prediction(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

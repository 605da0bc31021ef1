"""torch.compile set-up against eager steps for the default unet2d (batch 8 of 256^2, bf16 autocast, Adam).

    PYTHONPATH=src .venv/bin/python benchmarks/compile_setup.py

Prints the eager step time, the first compiled step (the set-up) and the next ones (docs/BENCHMARKS.md,
"Training route"; the reason the route probe tries torch.compile only for long budgets).
"""

import time

import torch

from emseg.models import build_model


def main() -> None:
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


if __name__ == "__main__":
    main()

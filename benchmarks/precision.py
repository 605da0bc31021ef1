"""Training-step time of the default U-Net in fp32, with bf16 autocast and with torch.compile on this CPU.

    .venv/bin/python benchmarks/precision.py

Prints seconds per step (batch 8 of 256x256, forward + backward + Adam) for each
precision, for fp32 under ``torch.compile`` (default mode) and whether the CPU
has native bf16 (AVX512-BF16 / AMX). Eager and compiled fp32 steps alternate,
two at a time, so that a slow spell of a shared VM hits both; medians over 12
steps each, first (compiling) step timed on its own. Writes
benchmarks/results/precision.json.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from emseg._device import cpu_has_native_bf16
from emseg.models import build_model


def stepper(dtype: torch.dtype | None = None, *, compile: bool = False) -> Callable[[], float]:
    """A function running one training step and returning its seconds."""
    torch.manual_seed(0)
    net = build_model("unet2d", in_channels=1, num_classes=7)
    opt = torch.optim.Adam(net.parameters())
    model = torch.compile(net) if compile else net
    x, y = torch.randn(8, 1, 256, 256), torch.randint(0, 7, (8, 256, 256))

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    eager, compiled, bf16 = stepper(), stepper(compile=True), stepper(torch.bfloat16)
    # first steps are warm-ups, left out of the medians; the compiled one includes the compilation
    first = {"eager": eager(), "compiled": compiled(), "bf16": bf16()}
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(6):
        for name, step in (("eager", eager), ("compiled", compiled)):
            times[name] += [step(), step()]
    result = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "native_bf16": cpu_has_native_bf16(), "capability": torch.backends.cpu.get_cpu_capability(),
              "fp32_s_per_step": median(times["eager"]), "bf16_s_per_step": bf16(),
              "compiled_fp32_s_per_step": median(times["compiled"]),
              "fp32_range_s": [min(times["eager"]), max(times["eager"])],
              "compiled_fp32_range_s": [min(times["compiled"]), max(times["compiled"])],
              "compile_first_step_s": first["compiled"],
              "note": "compile_first_step_s is short when torch inductor's cache (under /tmp) already holds the graphs; "
                      "about 70 s cold on this VM"}
    result["bf16_speedup"] = result["fp32_s_per_step"] / result["bf16_s_per_step"]
    result["compile_speedup"] = result["fp32_s_per_step"] / result["compiled_fp32_s_per_step"]
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "precision.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Training-step time of the default U-Net in fp32 and with bf16 autocast on this CPU.

    .venv/bin/python benchmarks/precision.py

Prints seconds per step (batch 8 of 256x256, forward + backward + Adam) for each
precision and whether the CPU has native bf16 (AVX512-BF16 / AMX). Writes
benchmarks/results/precision.json.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from emseg._device import cpu_has_native_bf16
from emseg.models import build_model


def step_time(dtype: torch.dtype | None, steps: int = 3) -> float:
    torch.manual_seed(0)
    model = build_model("unet2d", in_channels=1, num_classes=7)
    opt = torch.optim.Adam(model.parameters())
    x, y = torch.randn(8, 1, 256, 256), torch.randint(0, 7, (8, 256, 256))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]  # median, first step excluded


def main() -> None:
    result = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "native_bf16": cpu_has_native_bf16(), "capability": torch.backends.cpu.get_cpu_capability(),
              "fp32_s_per_step": step_time(None), "bf16_s_per_step": step_time(torch.bfloat16, steps=1)}
    result["bf16_speedup"] = result["fp32_s_per_step"] / result["bf16_s_per_step"]
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "precision.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Device and numeric precision choices shared by training and prediction."""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["autocast", "cpu_has_native_bf16", "default_device", "resolve_precision"]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX).

    Without them, oneDNN emulates bf16 and autocast is *slower* than fp32: on
    the AVX2-only development machine a U-Net step took 25x longer in bf16
    (docs/BENCHMARKS.md), so ``precision: auto`` uses fp32 there.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """``"auto" | "fp32" | "bf16"`` -> autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context for ``dtype``, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)

"""Device and numeric precision choices shared by training and prediction."""

from __future__ import annotations

import contextlib
import functools
import logging
import os

import torch

logger = logging.getLogger(__name__)

__all__ = ["NATIVE_BF16_ENV", "autocast", "cpu_has_native_bf16", "default_device", "resolve_precision"]


#: Environment variable that overrides the CPU check: "1" (the CPU has native bf16) or "0" (it has not).
#: The test suite sets it so that ``precision: auto`` means the same on every machine, and runs the
#: precision-sensitive tests once with each value; a user can set it to try the other route.
NATIVE_BF16_ENV = "EMSEG_NATIVE_BF16"


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX), or ``EMSEG_NATIVE_BF16=1``.

    An ISA cap below bf16 for oneDNN (``ONEDNN_MAX_CPU_ISA=AVX2``, e.g. to run as an AVX2-only CPU would)
    means no native bf16 whatever the CPU flags say.

    Without them, oneDNN emulates bf16 and autocast is *slower* than fp32: on
    the AVX2-only development machine a U-Net step took 25x longer in bf16
    (docs/BENCHMARKS.md), so ``precision: auto`` uses fp32 there.
    """
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ValueError(f"{NATIVE_BF16_ENV} must be 0 or 1 (or unset to read the CPU flags), got {forced!r}")
    return _cpu_flags_have_bf16() and not _isa_capped_below_bf16()


#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA``) that keep its bf16 instructions.
_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "ALL", "DEFAULT")


def _isa_capped_below_bf16() -> bool:
    """oneDNN is told (``ONEDNN_MAX_CPU_ISA``, or its old name ``DNNL_MAX_CPU_ISA``) to stay below bf16."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        isa = os.environ.get(var, "").strip().upper()
        if isa:
            return not (isa in _BF16_ISAS or isa.startswith("AVX10"))
    return False


@functools.cache
def _cpu_flags_have_bf16() -> bool:
    """The CPU flags in /proc/cpuinfo name ``avx512_bf16`` or ``amx_bf16``."""
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

"""``precision: auto`` follows the CPU check, which EMSEG_NATIVE_BF16 overrides (the suite's bf16 fixture uses it)."""

from __future__ import annotations

import pytest
import torch

from emseg._device import NATIVE_BF16_ENV, _cpu_flags_have_bf16, cpu_has_native_bf16, resolve_precision

CPU = torch.device("cpu")


def test_auto_precision_follows_the_override_and_explicit_choices_do_not(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    assert cpu_has_native_bf16() and resolve_precision("auto", CPU) is torch.bfloat16
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    assert not cpu_has_native_bf16() and resolve_precision("auto", CPU) is None
    assert resolve_precision("bf16", CPU) is torch.bfloat16 and resolve_precision("fp32", CPU) is None
    monkeypatch.delenv(NATIVE_BF16_ENV)
    with open("/proc/cpuinfo") as f:  # unset: the CPU flags decide
        flags = f.read()
    assert cpu_has_native_bf16() == _cpu_flags_have_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.mark.parametrize(("isa", "native"), [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_AMX", None),
                                             ("AVX10_1_512", None), ("", None)])
def test_a_onednn_isa_cap_below_bf16_means_no_native_bf16(monkeypatch, isa, native):
    monkeypatch.delenv(NATIVE_BF16_ENV, raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert cpu_has_native_bf16() is (_cpu_flags_have_bf16() if native is None else native)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", isa)  # the old name
    assert cpu_has_native_bf16() is (_cpu_flags_have_bf16() if native is None else native)


def test_cpu_bf16_fixture_switches_auto(cpu_bf16):
    assert resolve_precision("auto", CPU) is (torch.bfloat16 if cpu_bf16 else None)


def test_a_bad_override_names_the_variable(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="EMSEG_NATIVE_BF16 must be 0 or 1"):
        cpu_has_native_bf16()
    with pytest.raises(ValueError, match="precision must be 'auto', 'fp32' or 'bf16'"):
        resolve_precision("fp16", CPU)

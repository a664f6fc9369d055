"""Device, dtype and precision choices follow what the hardware computes natively (CPU flags faked both ways)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from puyu import hardware
from puyu.errors import ConfigError
from puyu.hardware import CpuFeatures, resolve_dtype, resolve_precision

CPU = torch.device("cpu")
AVX2_ONLY = CpuFeatures(avx2=True)  # e.g. AMD Zen 3: bf16 only emulated
AVX512_NO_BF16 = CpuFeatures(avx2=True, avx512=True, vnni=True)  # e.g. Skylake/Cascade Lake servers
AVX512_BF16 = CpuFeatures(avx2=True, avx512=True, vnni=True, avx512_bf16=True)  # e.g. Zen 4, Cooper Lake
AMX = CpuFeatures(avx2=True, avx512=True, vnni=True, avx512_bf16=True, amx=True)  # e.g. Sapphire Rapids


@pytest.fixture
def flags(monkeypatch):
    def fake(features: CpuFeatures):
        monkeypatch.setattr(hardware, "cpu_features", lambda: features)

    return fake


@pytest.mark.parametrize("features", [AVX2_ONLY, AVX512_NO_BF16, CpuFeatures()])
def test_auto_is_float32_without_native_bf16(flags, features):
    flags(features)
    precision = resolve_precision("auto", CPU)
    assert precision.name == "fp32" and "no native bf16" in precision.reason
    assert resolve_dtype("auto", CPU) == torch.float32


@pytest.mark.parametrize("features", [AVX512_BF16, AMX, CpuFeatures(arm_bf16=True)])
def test_auto_dtype_is_bf16_with_native_bf16(flags, features):
    flags(features)
    assert resolve_dtype("auto", CPU) == torch.bfloat16  # decode is memory-bound: half the bytes per token
    # Quantized weights: the packed kernels compute in bf16 anyway; float32 elsewhere is as fast and exact.
    assert resolve_dtype("auto", CPU, quantized=True) == torch.float32
    assert resolve_dtype("bfloat16", CPU, quantized=True) == torch.bfloat16  # an explicit choice stands


def test_auto_training_precision_is_bf16_with_x86_bf16_dot_products(flags):
    for features, which in ((AMX, "AMX"), (AVX512_BF16, "AVX512-BF16")):
        flags(features)
        precision = resolve_precision("auto", CPU)
        assert precision.name == "bf16" and f"natively ({which})" in precision.reason
    flags(CpuFeatures(arm_bf16=True))  # native bf16, but training in it is not measured there
    precision = resolve_precision("auto", CPU)
    assert precision.name == "fp32" and "natively" in precision.reason and "not measured" in precision.reason


def test_forced_bf16_on_emulating_cpu_warns_with_cost_and_flag_but_runs(flags, caplog):
    flags(AVX2_ONLY)
    with caplog.at_level(logging.WARNING, logger="puyu"):
        precision = resolve_precision("bf16", CPU)
    assert precision.name == "bf16"  # the user insisted: it still runs
    assert "slower than float32" in caplog.text and "train.precision=fp32" in caplog.text and "avx2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="puyu"):
        assert resolve_dtype("bfloat16", CPU, flag="--dtype float32") == torch.bfloat16
    assert "--dtype float32" in caplog.text


def test_forced_bf16_on_native_cpu_and_fp32_anywhere_are_silent(flags, caplog):
    with caplog.at_level(logging.WARNING, logger="puyu"):
        flags(AMX)
        assert resolve_precision("bf16", CPU).name == "bf16"
        flags(AVX2_ONLY)
        assert resolve_precision("fp32", CPU).name == "fp32"
        assert resolve_dtype("float32", CPU) == torch.float32
    assert caplog.text == ""


def test_bad_names_are_config_errors():
    with pytest.raises(ConfigError, match="use auto, fp32, bf16"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ConfigError, match="unknown dtype 'half'"):
        resolve_dtype("half", CPU)
    with pytest.raises(ConfigError, match="unknown device"):
        hardware.resolve_device("tpu:0")


def test_real_flags_are_read_and_described():
    features = hardware.cpu_features()
    line = hardware.describe_machine()
    assert f"native bf16 {'yes' if features.native_bf16 else 'no'}" in line and torch.__version__ in line
    if features.avx512:
        assert features.avx2  # every AVX-512 CPU has AVX2


def _in_a_subprocess(code: str, **env: str) -> list[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout.split("|")


@pytest.mark.skipif(not hardware.cpu_features().avx2, reason="an x86 CPU with AVX2")
def test_pytorchs_dispatch_cap_caps_what_puyu_uses_too():
    """ATEN_CPU_CAPABILITY=avx2 on any AVX2 CPU: no AVX-512 flag, the 256-bit kernel builds only, float32 by ``auto``;
    AVX-VNNI stays where the CPU has it (Intel's AVX2-only client cores have it)."""
    code = ("from puyu import hardware; from puyu.kernels.build import builds_here; import torch\n"
            "f = hardware.cpu_features()\n"
            "print(torch.backends.cpu.get_cpu_capability(), f.names(), builds_here(),\n"
            "      hardware.resolve_dtype('auto', torch.device('cpu')), sep='|')")
    vnni = hardware._linux_cpu_flags() >= {"avx_vnni"}
    out = _in_a_subprocess(code, ATEN_CPU_CAPABILITY="avx2")
    flags = str(["avx2", "avx_vnni"] if vnni else ["avx2"])
    assert out == ["AVX2", flags, flags, "torch.float32\n"]


@pytest.mark.skipif(not hardware.cpu_features().avx2, reason="an x86 CPU with AVX2")
def test_puyu_kernels_pins_a_build_and_refuses_one_the_cpu_cannot_run():
    code = "from puyu.kernels import build; print(build.build_name())"
    assert _in_a_subprocess(code, PUYU_KERNELS="avx2") == ["avx2\n"]
    for wrong, why in (("avx3", "no such build"), ("avx512_vnni", "this CPU cannot run that build")):
        with pytest.raises(subprocess.CalledProcessError) as failed:
            _in_a_subprocess(code, PUYU_KERNELS=wrong, ATEN_CPU_CAPABILITY="avx2")
        assert f"PUYU_KERNELS={wrong}: {why}; this CPU runs avx2" in failed.value.stderr

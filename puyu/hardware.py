"""What this machine computes natively, and the device, dtype and precision choices that follow.

The one place where puyu decides by hardware.  Everything that picks a dtype
(loading for chat/serve/eval/agent, training precision, benchmarks) asks here:

- :func:`resolve_device` — ``auto`` is CUDA when present, else the CPU.
- :func:`resolve_dtype` — ``auto`` is bf16 where the device computes bf16
  natively (CUDA with bf16; CPUs with AVX512-BF16 or AMX; Arm with BF16), fp16
  on older CUDA GPUs, float32 otherwise.  On a CPU without native bf16 PyTorch
  emulates it through float32 conversions: prompts are processed several times
  slower than in float32 (a 512-token prefill 6x slower on 2 AVX2 cores), so
  ``auto`` never picks it there, although decode alone, bound by memory, ran
  1.9x faster in bf16 on the same cores (31 vs 16 tok/s).  A model whose weights will be quantized
  (``serve --quant``) gets float32 on any CPU: its quantized matmuls run in bf16
  inside PyTorch's packed kernels anyway, the rest measured as fast in float32
  as in bf16 (w4a16 decode 32.7 vs 33.9 tok/s, w8a16 38.1 vs 39.4 on 2
  AVX512-BF16 cores), and float32 keeps batched and speculative decoding exact.
- :func:`resolve_precision` — training (``auto``/``fp32``/``bf16``), with the
  reason in words: ``auto`` is bf16 (autocast) on CUDA GPUs with bf16 and on
  x86 CPUs with bf16 dot products (AVX512-BF16 or AMX), float32 elsewhere.
  Measured on 2 AVX512-BF16 cores without AMX (Zen 4): the shipped
  ``lora_sft`` recipe 302 vs 213 tokens/s, agent tuning 287 vs 187,
  ``bench/train.py`` LoRA 397 vs 273, ``bench/pretrain.py`` 4213 vs 2839 (an
  earlier build trained slower in bf16 there: each new row count of the LM
  head's last chunk built a fresh oneDNN bf16 kernel; see
  ``puyu.train.objective.ROW_ALIGN``).  Arm's BF16 is not measured for
  training, so ``auto`` keeps float32 there.  Forcing bf16 where it is
  emulated still runs, after a warning that names the cost and the flag to
  change it.
- :func:`cpu_features` / :func:`describe_machine` — the CPU's relevant flags,
  read through PyTorch's cpuinfo (cross-platform), for kernels, logs and
  benchmark headers; AVX-VNNI, which PyTorch does not report, from Linux's
  /proc/cpuinfo (elsewhere it reads as absent and the AVX2 kernel build runs;
  no Intel Mac has it).

Tests fake the flags by monkeypatching :func:`cpu_features`.
"""

from __future__ import annotations

import functools
import logging
import platform
from dataclasses import dataclass

import torch

from puyu.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
PRECISIONS = ("auto", "fp32", "bf16")
EMULATED_SLOWDOWN = "prompt processing typically 3-10x slower than float32"


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU flags that decide kernels and dtypes (x86 names; ``arm_bf16`` for Arm's BF16 extension)."""

    avx2: bool = False
    avx_vnni: bool = False  # VNNI for 256-bit vectors: Intel's client cores since Alder Lake (no AVX-512 there)
    avx512: bool = False
    vnni: bool = False
    avx512_bf16: bool = False
    amx: bool = False
    arm_bf16: bool = False

    @property
    def native_bf16(self) -> bool:
        """The CPU has bf16 arithmetic instructions (dot products in bf16), not just conversions."""
        return self.avx512_bf16 or self.amx or self.arm_bf16

    def names(self) -> list[str]:
        return [name for name in ("avx2", "avx_vnni", "avx512", "vnni", "avx512_bf16", "amx", "arm_bf16") if getattr(self, name)]


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This CPU's flags (PyTorch's cpuinfo; all False where it cannot tell), capped by PyTorch's dispatch level.

    ``ATEN_CPU_CAPABILITY=avx2`` (or ``default``) makes PyTorch's kernels and Inductor's generated code use at most
    AVX2 (or no vector instructions); puyu then uses no more either (its kernel build, the dtype ``auto`` picks, the
    compile cache's key): the whole product runs as on an AVX2 CPU, which is how AVX2 figures are measured on an
    AVX-512 machine, and a way round an AVX-512 problem.  AVX-VNNI stays under the ``avx2`` cap: it is part of the
    256-bit instruction set of Intel's AVX2-only client CPUs (``PUYU_KERNELS=avx2`` leaves it out of puyu's kernels:
    see :mod:`puyu.kernels.build`).
    """
    cpu = torch.cpu
    probe = lambda name: bool(getattr(cpu, name, lambda: False)())  # noqa: E731  private but stable since torch 2.1
    arm = platform.machine().lower() in ("aarch64", "arm64")
    arm_bf16 = arm and torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    capability = torch.backends.cpu.get_cpu_capability()
    wide = arm or capability not in ("AVX2", "DEFAULT")  # AVX-512 allowed
    avx2 = probe("_is_avx2_supported") and capability != "DEFAULT"
    return CpuFeatures(avx2=avx2, avx_vnni=avx2 and "avx_vnni" in _linux_cpu_flags(), avx512=wide and probe("_is_avx512_supported"),
                       vnni=wide and probe("_is_vnni_supported"), avx512_bf16=wide and probe("_is_avx512_bf16_supported"),
                       amx=wide and probe("_is_amx_tile_supported"), arm_bf16=arm_bf16)


def _linux_cpu_flags() -> set[str]:
    """The flags of /proc/cpuinfo's first processor (empty where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((set(line.split(":", 1)[1].split()) for line in info if line.startswith("flags")), set())
    except OSError:
        return set()


def describe_machine() -> str:
    """One line for logs and benchmark headers: CPU flags, PyTorch's kernel level, threads, GPU."""
    features = cpu_features()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()} CPU [{' '.join(features.names()) or 'no AVX2'}], torch {torch.__version__} "
            f"kernels {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
            f"native bf16 {'yes' if features.native_bf16 else 'no'}, {gpu}")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → CUDA when present, else the CPU; a named device is checked to exist."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_features().native_bf16


def _bf16_reason(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} {'computes' if native_bf16(device) else 'lacks'} bf16"
    features = cpu_features()
    if features.native_bf16:
        which = "AMX" if features.amx else "AVX512-BF16" if features.avx512_bf16 else "Arm BF16"
        return f"this CPU computes bf16 natively ({which})"
    return f"this CPU has no native bf16 ({' '.join(features.names()) or 'no AVX2'}), so PyTorch would emulate it"


def fast_bf16_training(device: torch.device) -> bool:
    """Whether bf16 autocast trains faster than float32 on ``device``: CUDA with bf16, or an x86 CPU with
    AVX512-BF16 or AMX (see the module docstring for the figures)."""
    if device.type == "cuda":
        return native_bf16(device)
    features = cpu_features()
    return device.type == "cpu" and (features.amx or features.avx512_bf16)


def warn_if_emulated(dtype: torch.dtype, device: torch.device, flag: str) -> None:
    """Warn that a half-precision ``dtype`` the user forced is emulated on ``device``; name ``flag`` to change it."""
    emulated = (dtype == torch.bfloat16 and not native_bf16(device)) or (dtype == torch.float16 and device.type == "cpu")
    if emulated:
        name = "bf16" if dtype == torch.bfloat16 else "fp16"
        why = _bf16_reason(device) if dtype == torch.bfloat16 else "CPUs have no fp16 matrix kernels in PyTorch"
        log.warning(f"{name} was asked for but {why}: {EMULATED_SLOWDOWN}; use {flag} (or auto) for full speed")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, flag: str = "--dtype float32",
                  quantized: bool = False) -> torch.dtype:
    """A model dtype: ``auto`` by the device (see the module docstring), else the named one (warned if emulated)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if native_bf16(device) else torch.float16
        if quantized:
            log.info("dtype auto -> float32: quantized layers compute in their own integer kernels either way, and the "
                     "rest in float32 is as fast (measured) and keeps batched decoding exact")
            return torch.float32
        chosen = torch.bfloat16 if native_bf16(device) else torch.float32
        log.info(f"dtype auto -> {str(chosen).removeprefix('torch.')}: {_bf16_reason(device)}")
        return chosen
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    warn_if_emulated(DTYPES[dtype], device, flag)
    return DTYPES[dtype]


@dataclass(frozen=True)
class Precision:
    """A resolved training precision.

    Attributes:
        name: ``fp32`` or ``bf16`` (bf16 = bf16 autocast with frozen weights stored in bf16).
        reason: why, in words, for the run's log.
    """

    name: str
    reason: str

    def autocast(self, device: torch.device):
        """The autocast context for forward passes under this precision (disabled for fp32)."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.name == "bf16")


def resolve_precision(precision: str, device: torch.device, flag: str = "train.precision=fp32") -> Precision:
    """``auto`` → bf16 where it trains faster (:func:`fast_bf16_training`), else fp32; a forced bf16 that is emulated warns."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is unknown; use {', '.join(PRECISIONS)}")
    reason = _bf16_reason(device)
    if precision == "auto":
        if fast_bf16_training(device):
            return Precision("bf16", f"auto: {reason}")
        if native_bf16(device):
            reason += ", but bf16 training is not measured on this kind of CPU (force it with train.precision=bf16)"
        return Precision("fp32", f"auto: {reason}")
    if precision == "bf16":
        warn_if_emulated(torch.bfloat16, device, flag)
    return Precision(precision, "set in the recipe")

"""Fast int4/int8 weight-only matrix products on AVX2 CPUs (``cpu_gemv.c``), built once and cached.

- :func:`available` — whether this machine can use them: an x86 CPU with AVX2 and FMA, a C compiler that built
  the library (cached under ``$PUYU_HOME/kernels/``, keyed by a hash of the source, the flags and the compiler's
  version, so a changed source or compiler builds anew and a foreign file is never loaded), and the library loaded.
  A failure is logged once with its reason and callers keep PyTorch's packed kernels.
- :func:`int4_matmul` / :func:`int8_matmul` — ``x [..., K]`` (any float dtype) times puyu's weight-only layouts
  (see ``cpu_gemv.c``), returning ``x``'s dtype.  Under ``torch.compile`` they are the custom ops
  ``puyu::int4_matmul`` / ``puyu::int8_matmul``, opaque to the graph.

Why C through ctypes and not a PyTorch C++ extension: an extension needs ninja and compiles PyTorch's headers (about
a minute per build); this file includes only the compiler's intrinsics, builds in a second with the ``cc`` every
Linux machine with Python headers has, and ctypes passes the tensors' data pointers (and releases the GIL, so a
server's event loop keeps running during a product).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from puyu.hardware import cpu_features
from puyu.home import home_subdir

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("cpu_gemv.c")
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-lm"]
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(compiler: str, again: bool = False) -> Path:
    """The library's path, compiled unless the cache holds it (``again``: replace what the cache holds)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + version.encode()).hexdigest()[:16]
    target = home_subdir("kernels") / f"cpu_gemv-{key}.so"
    if again or not target.is_file():
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True)
            if result.returncode:
                raise OSError(f"{compiler} failed: {result.stderr.strip()[-400:]}")
            os.replace(built, target)  # whole or not at all: a killed build leaves no half library
    return target


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    features = cpu_features()
    if not features.avx2:
        log.info("AVX2 int4/int8 kernels: not used (this CPU has no AVX2); PyTorch's packed kernels instead")
        return None
    compiler = _compiler()
    if compiler is None:
        log.warning("AVX2 int4/int8 kernels: no C compiler (cc/gcc; or set CC), so PyTorch's packed kernels run instead "
                    "(about 3x slower decode with --quant); install gcc to get them")
        return None
    try:
        try:
            lib = ctypes.CDLL(str(_build(compiler)))
        except OSError:  # a damaged cached file: build it again, once
            lib = ctypes.CDLL(str(_build(compiler, again=True)))
    except (OSError, subprocess.CalledProcessError) as e:
        log.warning("AVX2 int4/int8 kernels: build or load failed (%s); PyTorch's packed kernels run instead", e)
        return None
    lib.puyu_int4_gemm.argtypes = [_ptr, _i64, _i64, _ptr, _ptr, _i64, _i64, _ptr, ctypes.c_int]
    lib.puyu_int8_gemm.argtypes = [_ptr, _i64, _i64, _ptr, _ptr, _i64, _ptr, ctypes.c_int]
    return lib


def available() -> bool:
    """Whether the AVX2 kernels run here (see the module docstring)."""
    return _library() is not None


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a contiguous float32 matrix, with no tensor op where none is needed (each costs microseconds, and a
    decode step makes 120 calls)."""
    flat = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    if flat.dtype != torch.float32:
        flat = flat.float()
    return flat if flat.is_contiguous() else flat.contiguous()


def _shaped(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    y = y if x.dim() == 2 else y.view(*x.shape[:-1], y.shape[-1])
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def _check(code: int, what: str) -> None:
    if code:
        raise RuntimeError(f"{what}: {'shapes not multiples of 32' if code == 1 else 'out of memory'}")


def _int4(x: torch.Tensor, qweight: torch.Tensor, table: torch.Tensor, group_size: int) -> torch.Tensor:
    flat, n = _flat(x), qweight.shape[0]
    y = torch.empty(flat.shape[0], n, dtype=torch.float32)
    _check(_library().puyu_int4_gemm(flat.data_ptr(), flat.shape[0], flat.shape[1], qweight.data_ptr(), table.data_ptr(), n,
                                     group_size, y.data_ptr(), torch.get_num_threads()), "int4 matmul")
    return _shaped(y, x)


def _int8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    flat, n = _flat(x), qweight.shape[0]
    y = torch.empty(flat.shape[0], n, dtype=torch.float32)
    _check(_library().puyu_int8_gemm(flat.data_ptr(), flat.shape[0], flat.shape[1], qweight.data_ptr(), scale.data_ptr(), n,
                                     y.data_ptr(), torch.get_num_threads()), "int8 matmul")
    return _shaped(y, x)


@torch.library.custom_op("puyu::int4_matmul", mutates_args=(), device_types="cpu")
def _int4_op(x: torch.Tensor, qweight: torch.Tensor, table: torch.Tensor, group_size: int) -> torch.Tensor:
    return _int4(x, qweight, table, group_size)


@torch.library.custom_op("puyu::int8_matmul", mutates_args=(), device_types="cpu")
def _int8_op(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return _int8(x, qweight, scale)


@_int4_op.register_fake
def _(x, qweight, table, group_size):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])


@_int8_op.register_fake
def _(x, qweight, scale):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])


def int4_matmul(x: torch.Tensor, qweight: torch.Tensor, table: torch.Tensor, group_size: int) -> torch.Tensor:
    """``x @ W.T`` for int4 ``qweight`` ``[N, K/2]`` and float32 ``table`` ``[N, K/group_size, 2]`` (scale, zero)."""
    if torch.compiler.is_compiling():
        return _int4_op(x, qweight, table, group_size)
    return _int4(x, qweight, table, group_size)  # eager: skip the dispatcher's Python round trip (~10 us a call)


def int8_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` for int8 ``qweight`` ``[N, K]`` and float32 per-row ``scale`` ``[N]``."""
    if torch.compiler.is_compiling():
        return _int8_op(x, qweight, scale)
    return _int8(x, qweight, scale)

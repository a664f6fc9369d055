"""Fast int4/int8 weight-only matrix products on AVX2 CPUs (``cpu_gemv.c``), built once and cached.

- :func:`available` — whether this machine can use them: an x86 CPU with AVX2 and FMA, a C compiler that built
  the library (cached under ``$PUYU_HOME/kernels/``, keyed by a hash of the source, the flags and the compiler's
  version, so a changed source or compiler builds anew and a foreign file is never loaded), and the library loaded.
  A failure is logged once with its reason and callers keep PyTorch's packed kernels.
- :func:`build_name` — which build runs: ``avx512_vnni`` where the CPU has AVX-512 with VNNI and the compiler
  builds it (same bits; int4 decode products 1.3-1.6x faster on 2 Xeon cores), else ``avx2``.
- :func:`pack_int4` / :func:`pack_int8` (and their inverses) — weights in the kernels' layouts: tiles of 8 output
  rows (see ``cpu_gemv.c``).
- :func:`int4_matmul` / :func:`int8_matmul` — ``x [..., K]`` (any float dtype) times those layouts, returning
  ``x``'s dtype.  Under ``torch.compile`` they are the custom ops
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
_AVX2 = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC", "-lm"]
# The builds of cpu_gemv.c, best last; each runs where the CPU has its instructions (see cpu_gemv.c for what differs).
BUILDS = {"avx2": _AVX2, "avx512_vnni": [*_AVX2, "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]}
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
NIBBLE_SHIFTS = (0, 16, 4, 20, 8, 24, 12, 28)  # int4 layout: input 2i of a chunk of 8 at bit 4i, input 2i + 1 at bit 16 + 4i


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def builds_here() -> list[str]:
    """The builds this CPU can run, best last (none without AVX2)."""
    features = cpu_features()
    return [name for name, ok in (("avx2", features.avx2), ("avx512_vnni", features.avx2 and features.avx512 and features.vnni)) if ok]


def _build(compiler: str, build: str, again: bool = False) -> Path:
    """The library's path, compiled unless the cache holds it (``again``: replace what the cache holds)."""
    flags = BUILDS[build]
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode() + version.encode()).hexdigest()[:16]
    target = home_subdir("kernels") / f"cpu_gemv-{build}-{key}.so"
    if again or not target.is_file():
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            result = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built)], capture_output=True, text=True)
            if result.returncode:
                raise OSError(f"{compiler} failed: {result.stderr.strip()[-400:]}")
            os.replace(built, target)  # whole or not at all: a killed build leaves no half library
    return target


def _load(compiler: str, build: str) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(_build(compiler, build)))
    except OSError:  # a damaged cached file: build it again, once
        lib = ctypes.CDLL(str(_build(compiler, build, again=True)))
    lib.puyu_int4_gemm.argtypes = [_ptr, _i64, _i64, _ptr, _ptr, _i64, _i64, _ptr, ctypes.c_int]
    lib.puyu_int8_gemm.argtypes = [_ptr, _i64, _i64, _ptr, _ptr, _i64, _ptr, ctypes.c_int]
    return lib


@functools.lru_cache(maxsize=None)
def _library(build: str | None = None) -> ctypes.CDLL | None:
    """The library of ``build`` (default: the best this CPU runs and the compiler builds), or None."""
    wanted = [build] if build else builds_here()[::-1]
    if not wanted:
        log.info("AVX2 int4/int8 kernels: not used (this CPU has no AVX2); PyTorch's packed kernels instead")
        return None
    compiler = _compiler()
    if compiler is None:
        log.warning("AVX2 int4/int8 kernels: no C compiler (cc/gcc; or set CC), so PyTorch's packed kernels run instead "
                    "(about 3x slower decode with --quant); install gcc to get them")
        return None
    for name in wanted:
        try:
            lib = _load(compiler, name)
        except (OSError, subprocess.CalledProcessError) as e:
            log.warning("int4/int8 kernels: the %s build failed (%s)%s", name, e,
                        "; trying the next" if name != wanted[-1] else "; PyTorch's packed kernels run instead")
            continue
        lib.build = name
        return lib
    return None


def build_name() -> str | None:
    """Which build of ``cpu_gemv.c`` runs here (``avx2``, ``avx512_vnni``), or None."""
    lib = _library()
    return lib.build if lib is not None else None


def available() -> bool:
    """Whether the AVX2 kernels run here (see the module docstring)."""
    return _library() is not None


def pack_int4(q: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``q`` ``[N, K]`` (0..15) with ``scale`` and ``low`` ``[N, K / G]`` (``w = q * scale + low``) in the
    kernel's int4 layout (``cpu_gemv.c``): ``(codes int32 [N8/8, K/8, 8], table float16 [N8/8, K/G, 2, 8])``."""
    n, k = q.shape
    q, scale, low = _padded(q.to(torch.int64)), _padded(scale.float()), _padded(low.float())
    chunks = q.view(-1, 8, k // 8, 8).transpose(1, 2)  # [tile, chunk, row, input]
    words = (chunks << torch.tensor(NIBBLE_SHIFTS)).sum(-1)
    codes = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    table = torch.stack([scale, low], 1).view(-1, 8, 2, scale.shape[1]).permute(0, 3, 2, 1)
    return codes.contiguous(), table.to(torch.float16).contiguous()


def unpack_int4(codes: torch.Tensor, table: torch.Tensor, out_features: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack_int4`: ``(q [N, K] uint8, scale [N, K/G], low [N, K/G])``."""
    nibbles = (codes.to(torch.int64)[..., None] >> torch.tensor(NIBBLE_SHIFTS)) & 15  # [tile, chunk, row, input]
    q = nibbles.transpose(1, 2).reshape(-1, codes.shape[1] * 8)[:out_features].to(torch.uint8)
    scale, low = table.permute(0, 3, 2, 1).reshape(-1, 2, table.shape[1]).unbind(1)
    return q, scale[:out_features], low[:out_features]


def pack_int8(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 ``q`` ``[N, K]`` with per-row ``scale`` ``[N]`` in the kernel's int8 layout:
    ``(codes int8 [N8/8, K/2, 8, 2], scale float32 [N8])``."""
    n, k = q.shape
    codes = _padded(q).view(-1, 8, k // 2, 2).transpose(1, 2)
    return codes.contiguous(), _padded(scale.float()[:, None])[:, 0].contiguous()


def unpack_int8(codes: torch.Tensor, scale: torch.Tensor, out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack_int8`: ``(q [N, K] int8, scale [N])``."""
    return codes.transpose(1, 2).reshape(-1, codes.shape[1] * 2)[:out_features], scale[:out_features]


def _padded(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` with zero rows appended up to a multiple of 8 (the kernels' tile)."""
    missing = -rows.shape[0] % 8
    return torch.cat([rows, rows.new_zeros(missing, *rows.shape[1:])]) if missing else rows


def _float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as contiguous float32, with no tensor op where none is needed: a decode step makes some 120 products, and
    each Python-level tensor op costs microseconds."""
    if x.dtype != torch.float32:
        x = x.float()
    return x if x.is_contiguous() else x.contiguous()


def _call(kernel, x: torch.Tensor, codes: torch.Tensor, middle: tuple, n: int, what: str) -> torch.Tensor:
    """Run ``kernel(x, M, K, codes, *middle, y, threads)`` into a new ``y [..., n]``; returns ``x``'s dtype."""
    flat, k = _float32(x), x.shape[-1]
    y = torch.empty((*x.shape[:-1], n), dtype=torch.float32)
    code = kernel(flat.data_ptr(), flat.numel() // k, k, codes.data_ptr(), *middle, y.data_ptr(), torch.get_num_threads())
    if code:
        raise RuntimeError(f"{what}: {'shapes not multiples of 32' if code == 1 else 'out of memory'}")
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def _int4(x: torch.Tensor, codes: torch.Tensor, table: torch.Tensor, group_size: int, n: int) -> torch.Tensor:
    return _call(_library().puyu_int4_gemm, x, codes, (table.data_ptr(), n, group_size), n, "int4 matmul")


def _int8(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
    return _call(_library().puyu_int8_gemm, x, codes, (scale.data_ptr(), n), n, "int8 matmul")


# The graph-visible ops, defined through torch.library.Library rather than the newer custom_op decorator: a custom_op
# call pays its Python wrapping on every call (17 us against 5 us, measured on 2 AVX2 cores), and a compiled decode
# step makes some 120 of them.
_OPS = torch.library.Library("puyu", "DEF")
_OPS.define("int4_matmul(Tensor x, Tensor codes, Tensor table, int group_size, int n) -> Tensor")
_OPS.define("int8_matmul(Tensor x, Tensor codes, Tensor scale, int n) -> Tensor")
_OPS.impl("int4_matmul", _int4, "CPU")
_OPS.impl("int8_matmul", _int8, "CPU")


@torch.library.register_fake("puyu::int4_matmul", lib=_OPS)
def _(x, codes, table, group_size, n):
    return x.new_empty(*x.shape[:-1], n)


@torch.library.register_fake("puyu::int8_matmul", lib=_OPS)
def _(x, codes, scale, n):
    return x.new_empty(*x.shape[:-1], n)


def int4_matmul(x: torch.Tensor, codes: torch.Tensor, table: torch.Tensor, group_size: int, n: int) -> torch.Tensor:
    """``x @ W.T`` for the ``n`` output rows of :func:`pack_int4`'s ``codes`` and ``table``."""
    if torch.compiler.is_compiling():
        return torch.ops.puyu.int4_matmul(x, codes, table, group_size, n)
    return _int4(x, codes, table, group_size, n)  # eager: skip the dispatcher's Python round trip (~10 us a call)


def int8_matmul(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
    """``x @ W.T`` for the ``n`` output rows of :func:`pack_int8`'s ``codes`` and ``scale``."""
    if torch.compiler.is_compiling():
        return torch.ops.puyu.int8_matmul(x, codes, scale, n)
    return _int8(x, codes, scale, n)

"""Building and loading puyu's CPU kernels, once per machine, and choosing the build the CPU runs.

- :func:`available` — whether this machine runs them: an x86 CPU with AVX2 and FMA, C and C++ compilers that built
  the kernels and their torch ops (cached under ``$PUYU_HOME/kernels/``, keyed by a hash of the sources, the flags,
  the compiler's version and, for the ops, torch's version: a changed source, compiler or torch builds anew and a
  foreign file is never loaded), and the libraries loaded.  A failure is logged once with its reason; callers then
  keep PyTorch's own kernels.
- :func:`build_name` — which build runs: the best this CPU runs and the compiler builds (the same bits from each):
  ``avx512_vnni`` where the CPU has AVX-512 with VNNI (int4 decode products 1.3-1.6x faster than ``avx2`` on 2 Xeon
  cores), ``avx_vnni`` where it has VNNI for 256-bit vectors only (Intel's client cores since Alder Lake: 1.2x faster
  int4 and 1.3x int8 products at 4-8 rows, measured with that build on the Xeon), else ``avx2``.
  ``PUYU_KERNELS=<build>`` pins one this CPU runs (to measure a plain AVX2 CPU on a newer one, or to step round a
  build's problem); :func:`use_build` switches in-process (tests compare the builds).
- :data:`LIBRARY` — the ``puyu`` op library: every kernel's schema is defined here, in Python, so that the ops exist
  (and trace under ``torch.compile``) wherever the C++ side could not be built.

Two libraries: the kernels are plain C (``gemv.c``, ``attention.c``, ``cross_entropy.c``, ``rms_norm.c``, ``rope.c``,
``span_attention.c`` and their header ``vector_math.h``; one build per instruction set, a second to compile: they
include only the compiler's intrinsics), and ``ops.cpp`` registers them as torch ops in C++ (about 15 s to compile
against torch's headers, once per torch version) and is handed the kernels of the build that runs. Not a PyTorch C++
extension: that needs ninja and compiles the kernels with torch's headers; two plain compiler calls need neither.
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
from torch.utils import cpp_extension

from puyu.errors import ConfigError
from puyu.hardware import cpu_features
from puyu.home import home_subdir

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
SOURCES = [HERE / "gemv.c", HERE / "attention.c", HERE / "cross_entropy.c", HERE / "rms_norm.c", HERE / "rope.c",
           HERE / "span_attention.c"]
HEADERS = [HERE / "vector_math.h"]  # included by the sources: part of their cache key
OPS_SOURCE = HERE / "ops.cpp"
_AVX2 = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC", "-lm"]
# The builds of the kernels, best last; each runs where the CPU has its instructions (see gemv.c for what differs).
BUILDS = {"avx2": _AVX2, "avx_vnni": [*_AVX2, "-mavxvnni"],
          "avx512_vnni": [*_AVX2, "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]}
_OPS_FLAGS = ["-O2", "-std=c++20", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
              *(f"-I{path}" for path in cpp_extension.include_paths()), *(f"-L{path}" for path in cpp_extension.library_paths()),
              "-lc10", "-ltorch_cpu"]

SCHEMAS = ("int4_matmul(Tensor x, Tensor codes, Tensor table, int group_size, int n, int activation_bits=16) -> Tensor",
           "int8_matmul(Tensor x, Tensor codes, Tensor scale, int n) -> Tensor",
           "paged_decode_attention(Tensor q, Tensor keys, Tensor values, Tensor slots, Tensor lengths, Tensor? rows=None) -> Tensor",
           "softmax_cross_entropy_(Tensor(a!) logits, Tensor targets, int rows, bool grad) -> Tensor",
           "rms_norm_forward(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)",
           "rms_norm_backward(Tensor grad, Tensor x, Tensor weight, Tensor rstd) -> (Tensor, Tensor)",
           "rope(Tensor x, Tensor cos, Tensor sin, bool backward, bool bf16_out) -> Tensor",
           "span_attention(Tensor q, Tensor k, Tensor v, Tensor spans) -> (Tensor, Tensor)",
           "span_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor spans) "
           "-> (Tensor, Tensor, Tensor)")
# The C functions handed to ops.cpp's puyu_use_kernels, in the order it takes them.
KERNELS = ("puyu_int4_gemm", "puyu_int8_gemm", "puyu_paged_decode_attention", "puyu_softmax_cross_entropy",
           "puyu_rms_norm_forward", "puyu_rms_norm_backward", "puyu_rope", "puyu_span_attention_forward",
           "puyu_span_attention_backward")
LIBRARY = torch.library.Library("puyu", "DEF")
for _schema in SCHEMAS:
    LIBRARY.define(_schema)


def ops_signature() -> str:
    """A digest of the ops' schemas and their C++ registration: compiled graphs that call them (Inductor's C++ wrapper
    passes the arguments a schema had when it compiled) are valid only with the same (part of the compile cache key)."""
    return hashlib.sha256("\n".join(SCHEMAS).encode() + OPS_SOURCE.read_bytes()).hexdigest()[:16]


def _compilers() -> tuple[str, str] | None:
    """The C and C++ compilers (``CC``/``CXX``, else cc/gcc and c++/g++), or None where either is missing."""
    c = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    return (c, cxx) if c and cxx else None


def builds_here() -> list[str]:
    """The builds this CPU can run, best last (none without AVX2)."""
    f = cpu_features()
    runs = {"avx2": f.avx2, "avx_vnni": f.avx2 and f.avx_vnni, "avx512_vnni": f.avx2 and f.avx512 and f.vnni}
    return [name for name in BUILDS if runs[name]]


def _wanted() -> list[str]:
    """The builds to try, best first: those this CPU runs, or the one ``PUYU_KERNELS`` pins."""
    runs, pinned = builds_here(), os.environ.get("PUYU_KERNELS", "").strip()
    if not pinned:
        return runs[::-1]
    if pinned not in runs:
        raise ConfigError(f"PUYU_KERNELS={pinned}: {'this CPU cannot run that build' if pinned in BUILDS else 'no such build'}; "
                          f"this CPU runs {', '.join(runs) or 'none (no AVX2)'} (unset PUYU_KERNELS to take the best)")
    return [pinned]


def _build(compiler: str, sources: list[Path], flags: list[str], name: str, salt: str = "", again: bool = False) -> Path:
    """The library ``sources`` compile to, compiled unless the cache holds it (``again``: replace what it holds)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    text = b"".join(source.read_bytes() for source in [*sources, *HEADERS]) + " ".join(flags).encode() + version.encode() + salt.encode()
    target = home_subdir("kernels") / f"{name}-{hashlib.sha256(text).hexdigest()[:16]}.so"
    if again or not target.is_file():
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            result = subprocess.run([compiler, *map(str, sources), *flags, "-o", str(built)], capture_output=True, text=True)
            if result.returncode:
                raise OSError(f"{compiler} failed: {result.stderr.strip()[-400:]}")
            os.replace(built, target)  # whole or not at all: a killed build leaves no half library
    return target


def _loaded(build, load):
    """``load(path)`` of what ``build(again)`` returns; a damaged cached file is built again, once."""
    try:
        return load(build(False))
    except OSError:
        return load(build(True))


@functools.lru_cache(maxsize=None)
def _kernels(build: str) -> ctypes.CDLL:
    """The loaded kernels of ``build`` (raises OSError or CalledProcessError where they cannot be built)."""
    c = _compilers()[0]
    return _loaded(lambda again: _build(c, SOURCES, BUILDS[build], f"kernels-{build}", again=again), ctypes.CDLL)


@functools.lru_cache(maxsize=None)
def _ops() -> ctypes.CDLL:
    """The loaded torch ops (registered with the dispatcher on load)."""
    cxx = _compilers()[1]

    def load(path: Path) -> ctypes.CDLL:
        torch.ops.load_library(str(path))
        return ctypes.CDLL(str(path))  # the same handle: for puyu_use_kernels

    return _loaded(lambda again: _build(cxx, [OPS_SOURCE], _OPS_FLAGS, "ops", torch.__version__, again), load)


def use_build(build: str) -> None:
    """Route the ops to the kernels of ``build`` (building what is missing; raises where it cannot)."""
    kernels, ops = _kernels(build), _ops()
    pointers = [ctypes.cast(getattr(kernels, name), ctypes.c_void_p) for name in KERNELS]
    ops.puyu_use_kernels((ctypes.c_void_p * len(pointers))(*pointers))


@functools.lru_cache(maxsize=None)
def _library() -> str | None:
    """The build the ops run (the best this CPU runs and the compilers build), or None."""
    wanted = _wanted()
    if not wanted:
        log.info("puyu's CPU kernels: not used (this CPU has no AVX2); PyTorch's own kernels instead")
        return None
    if _compilers() is None:
        log.warning("puyu's CPU kernels: no C and C++ compilers (cc/gcc and c++/g++; or set CC and CXX), so PyTorch's "
                    "own kernels run instead (about 3x slower decode with --quant); install gcc and g++ to get them")
        return None
    for name in wanted:
        try:
            use_build(name)
        except (OSError, subprocess.CalledProcessError) as e:
            log.warning("puyu's CPU kernels: the %s build failed (%s)%s", name, e,
                        "; trying the next" if name != wanted[-1] else "; PyTorch's own kernels run instead")
            continue
        return name
    return None


def build_name() -> str | None:
    """Which build of the kernels runs here (``avx2``, ``avx_vnni``, ``avx512_vnni``), or None."""
    return _library()


def available() -> bool:
    """Whether puyu's CPU kernels run here (see the module docstring)."""
    return _library() is not None

"""W8A8 linear layers: int8 weights, int8 activations, one int8 x int8 GEMM with int32 accumulation.

Formula (:class:`W8A8Linear`)::

    w ≈ qw * sw[:, None]    qw int8 [out, in], sw = max|w[o, :]| / 127      (per output channel, at load)
    x ≈ qx * sx[:, None]    qx int8 [rows, in], sx = max|x[r, :]| / 127     (per token, every call)
    y = (qx @ qw.T) * sx[:, None] * sw[None, :] + b                          (int32 sums, then float)

Symmetric int8 loses little on weights, and on activations once their outlier
channels are tamed by SmoothQuant's scales (:mod:`puyu.quant.smoothquant`),
which fold into the preceding norms and projections before this layer is built.

Outlier channels (``outliers``: input channel indices chosen on calibration
data) are LLM.int8()'s mixed-precision decomposition, with the channels fixed
at calibration instead of found per call: they are zeroed in the activation
before its per-token quantization and in the weight before its per-row one
(so neither scale is set by them) and computed apart in float::

    y = W8A8(x with x[:, o] = 0) + x[:, o] @ w[:, o].T

GEMM paths (``kernel``; :func:`resolve_w8a8_kernel` picks, the one log line at
start names it):

* ``int_mm``: ``torch._int_mm`` on the integer codes.  On the CPU it runs
  oneDNN's s8s8 GEMM, which uses the integer dot-product instructions the CPU
  has (AVX512-VNNI / AVX-VNNI ``vpdpbusd``, else AVX2 ``vpmaddubsw``); the
  weight stays ``[out, in]`` and goes in transposed (a column-major B), measured
  about 2.5x faster at one row than a contiguous ``[in, out]`` copy.  On CUDA it is
  cuBLASLt's int8 GEMM, which takes more than 16 rows (fewer are padded to 17)
  and widths that are multiples of 8 (other layers use ``dequantize``).
* ``dequantize``: the same quantized operands multiplied as floats (exact
  while the int32 sums stay below 2**24; the reference path, and any device).

Measured on an AVX512-VNNI core (one thread; ``bench/engine_step.py --gemm``
for the current machine), the 135M model's 576x1536 layer: one row 45 us
including the activation quantization (18 us of int8 GEMM) against 146 us for
the float32 matmul and 80 us for the int8 weight-only packed kernel; 128 rows
0.84 ms against 2.4 ms (float32) and 5.7 ms (packed).  fbgemm's
``torch.ops.quantized.linear_dynamic`` was a little faster (38 us, 0.55 ms) but
quantizes activations per tensor with 7-bit codes and is deprecated, so it is
not used.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from puyu.errors import ConfigError
from puyu.hardware import cpu_features

log = logging.getLogger(__name__)
KERNELS = ("auto", "int_mm", "dequantize")
CUDA_MIN_ROWS = 17  # cuBLASLt's int8 GEMM refuses 16 rows or fewer


def resolve_w8a8_kernel(kernel: str, device: torch.device, in_features: int, out_features: int) -> str:
    """``auto`` -> ``int_mm`` where ``torch._int_mm`` takes the layer (any CPU; CUDA with widths % 8 == 0), else ``dequantize``."""
    if kernel in ("packed",):
        raise ConfigError("quant_kernel=packed is the weight-only kernel (w8a16/w4a16); w8a8 takes auto, int_mm or dequantize")
    if kernel not in KERNELS:
        raise ConfigError(f"w8a8 kernel {kernel!r} is unknown; use {', '.join(KERNELS)}")
    fits = device.type == "cpu" or (device.type == "cuda" and in_features % 8 == 0 and out_features % 8 == 0)
    if kernel == "int_mm" and not fits:
        raise ConfigError(f"torch._int_mm does not take a {in_features}x{out_features} layer on {device.type}; use quant_kernel=dequantize")
    return "int_mm" if kernel == "auto" and fits else ("dequantize" if kernel == "auto" else kernel)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: ``x`` ``[M, K]`` -> codes ``[M, K]`` int8 and scales ``[M, 1]`` float32."""
    x = x.float()
    scale = x.abs().amax(-1, keepdim=True).clamp_(min=1e-8).div_(127)
    return (x / scale).round_().to(torch.int8), scale  # |x / scale| <= 127 by construction


def fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[M, K]`` rounded to its per-row int8 grid, in float32 (what :class:`W8A8Linear` computes with)."""
    q, scale = quantize_rows(x)
    return q.float() * scale


def int8_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` ``[M, K]`` int8 times ``b`` ``[N, K]`` int8, transposed: ``[M, N]`` int32 through ``torch._int_mm``."""
    rows = a.shape[0]
    if a.device.type == "cuda" and rows < CUDA_MIN_ROWS:
        a = torch.cat([a, a.new_zeros(CUDA_MIN_ROWS - rows, a.shape[1])])
        return torch._int_mm(a, b.t())[:rows]
    return torch._int_mm(a, b.t())


class W8A8Linear(nn.Module):
    """``nn.Linear`` with int8 weights and dynamically quantized int8 activations (see the module docstring).

    Args:
        linear: the float layer (its weight already smoothed, if SmoothQuant is used); left unchanged.
        kernel: ``auto``, ``int_mm`` or ``dequantize``.
        outliers: input channels computed in float (see the module docstring), or None.
    """

    def __init__(self, linear: nn.Linear, kernel: str = "auto", outliers: torch.Tensor | None = None):
        super().__init__()
        w = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kernel = resolve_w8a8_kernel(kernel, w.device, self.in_features, self.out_features)
        self.outliers = None if outliers is None or not len(outliers) else outliers.to(w.device, torch.long)
        if self.outliers is not None:
            self.register_buffer("outlier_weight", w[:, self.outliers].T.contiguous())  # float32 [k, out]
            self.register_buffer("keep", torch.ones(self.in_features, device=w.device).index_fill_(0, self.outliers, 0.0))
            w = w * self.keep
        qweight, scale = quantize_rows(w)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale[:, 0])  # float32 [out]
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()
        if self.outliers is not None:
            apart = flat.index_select(1, self.outliers)
            flat = flat * self.keep
        qx, sx = quantize_rows(flat)
        if self.kernel == "int_mm":
            acc = int8_gemm(qx, self.qweight)
        else:
            acc = F.linear(qx.float(), self.qweight.float())
        # int32 * float32 promotes to float32: one op where .float() and two multiplications take three.
        y = (acc * self.scale).mul_(sx)
        if self.outliers is not None:
            y.addmm_(apart, self.outlier_weight)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y + self.bias if self.bias is not None else y


def describe_w8a8_kernel(kernel: str, device: torch.device) -> str:
    """The GEMM path in words, for the one log line at start."""
    if kernel == "dequantize":
        return "int8 codes multiplied as floats (the reference path, not fast)"
    if device.type == "cuda":
        return "torch._int_mm (cuBLASLt int8 GEMM)"
    features = cpu_features()
    instructions = "VNNI" if features.vnni else "AVX2 vpmaddubsw" if features.avx2 else "no int8 dot-product instructions"
    return f"torch._int_mm (oneDNN s8s8 GEMM, {torch.backends.cpu.get_cpu_capability()} dispatch, {instructions})"


def convert_linears(model: nn.Module, names: list[str], kernel: str = "auto", outliers: dict[str, torch.Tensor] | None = None) -> int:
    """Replace the ``nn.Linear`` modules at ``names`` (module paths) with :class:`W8A8Linear` (``outliers``: their float
    input channels by module path); returns how many."""
    used = None
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = W8A8Linear(getattr(parent, child), kernel, (outliers or {}).get(name))
        setattr(parent, child, layer)
        used = layer
    if used is not None:
        log.info("quantized %d linear layers to w8a8; GEMM: %s", len(names), describe_w8a8_kernel(used.kernel, used.qweight.device))
    return len(names)

"""Weight-only quantized linear layers: int8 (w8a16) and group-wise int4 (w4a16), RTN at load.

Formats (what a calibration method such as AWQ produces too, so it can fill them):

* w8a16: ``qweight`` int8 ``[out, in]``, symmetric, one scale per output channel:
  ``w = q * scale[out]``.
* w4a16: asymmetric, one scale and zero per group of ``group_size`` input channels:
  ``w = (q - 8) * scale[g, out] + zero[g, out]`` with ``q`` in 0..15.  AWQ's
  per-channel activation scales fold into the preceding RMSNorm weight, so they
  need nothing new here.

Two kernel paths compute the same formula (``kernel`` below; ``auto`` picks):

* ``packed`` (CPU, the default there): PyTorch's packed kernels
  (``_weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``), which read 1 or
  0.5 bytes per weight instead of 2-4 — decode is bound by memory bandwidth, so
  that is the speed-up.  They are vectorized (AVX2 and AVX-512) only for bf16
  activations; with float32 or float16 activations they run a scalar loop,
  measured 15-60x slower on 2 cores (an int4 1536x576 layer, one row: 1.2-1.8 ms
  in float32 against 0.04-0.13 ms in bf16).  So this path always feeds them bf16,
  whatever the model's dtype, and returns the model's dtype: a float32 model on
  an AVX2 laptop gets the fast kernel too.
* ``dequantize`` (any device; the default off the CPU): rebuild the weight in the
  activation dtype each call and use the dense matmul.  Correct everywhere and
  the reference the packed path is tested against; not fast for decode.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from puyu.errors import ConfigError

log = logging.getLogger(__name__)
KERNELS = ("auto", "packed", "dequantize")
PACKED_ACTIVATIONS = torch.bfloat16  # the only dtype the packed CPU kernels vectorize (see the module docstring)
INT8_ROWS_PER_CALL = 12288
TARGETS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj", "lm_head")


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """``auto`` → ``packed`` on the CPU, ``dequantize`` elsewhere; a packed kernel off the CPU is refused."""
    if kernel not in KERNELS:
        raise ConfigError(f"quant kernel {kernel!r} is unknown; use {', '.join(KERNELS)}")
    if kernel == "auto":
        return "packed" if device.type == "cpu" else "dequantize"
    if kernel == "packed" and device.type != "cpu":
        raise ConfigError(f"the packed int4/int8 kernels run on the CPU only, the model is on {device.type}; use quant_kernel=dequantize")
    return kernel


def _packed_call(kernel, x: torch.Tensor, *args) -> torch.Tensor:
    """Run a packed CPU kernel on ``x`` (any leading shape) in bf16 and return ``x``'s dtype."""
    flat = x.reshape(-1, x.shape[-1]).to(PACKED_ACTIVATIONS)
    return kernel(flat, *args).reshape(*x.shape[:-1], -1).to(x.dtype)


class Int8Linear(nn.Module):
    """``y = x @ (q * scale).T + b`` with int8 ``q`` ``[out, in]`` and per-row ``scale``."""

    def __init__(self, linear: nn.Linear, kernel: str = "auto"):
        super().__init__()
        self.kernel = resolve_kernel(kernel, linear.weight.device)
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-8)
        self.register_buffer("qweight", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(PACKED_ACTIVATIONS if self.kernel == "packed" else linear.weight.dtype))
        self.bias = linear.bias

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.scale.dtype
        return self.qweight.to(dtype) * self.scale.to(dtype)[:, None]

    def _packed(self, flat: torch.Tensor) -> torch.Tensor:
        # A vocabulary-sized layer runs as slices of output rows: same values, and at 32 rows about 1.5x
        # faster than one call (the LM head: 23.6 -> 15.7 ms on 2 cores for 49152 x 576).
        parts = [torch.ops.aten._weight_int8pack_mm(flat, self.qweight[i : i + INT8_ROWS_PER_CALL], self.scale[i : i + INT8_ROWS_PER_CALL])
                 for i in range(0, self.qweight.shape[0], INT8_ROWS_PER_CALL)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _packed_call(self._packed, x) if self.kernel == "packed" else F.linear(x, self.dequantize(x.dtype))
        return y + self.bias if self.bias is not None else y


class Int4Linear(nn.Module):
    """Group-wise asymmetric int4; see the module docstring for the formula."""

    def __init__(self, linear: nn.Linear, group_size: int, kernel: str = "auto"):
        super().__init__()
        self.kernel = resolve_kernel(kernel, linear.weight.device)
        out_features, in_features = linear.weight.shape
        self.group_size, self.in_features = group_size, in_features
        w = linear.weight.detach().float().reshape(out_features, in_features // group_size, group_size)
        low, high = w.amin(-1), w.amax(-1)
        scale = ((high - low) / 15).clamp(min=1e-8)
        q = ((w - low[..., None]) / scale[..., None]).round().clamp(0, 15).reshape(out_features, in_features).to(torch.uint8)
        dtype = PACKED_ACTIVATIONS if self.kernel == "packed" else linear.weight.dtype
        # [in / group, out, 2]: the layout of PyTorch's int4 kernels.
        self.register_buffer("scales_and_zeros", torch.stack([scale, low + 8 * scale], -1).transpose(0, 1).contiguous().to(dtype))
        if self.kernel == "packed":
            self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1))
        else:  # two values a byte: even input channels in the low nibble
            self.register_buffer("qweight", q[:, 0::2] | (q[:, 1::2] << 4))
        self.bias = linear.bias

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight ``[out, in]`` (``dequantize`` path only: the packed layout is PyTorch's own)."""
        dtype = dtype or self.scales_and_zeros.dtype
        scale, zero = self.scales_and_zeros.to(dtype).unbind(-1)  # [in / group, out]
        out = self.qweight.shape[0]
        q = torch.stack([self.qweight & 15, self.qweight >> 4], -1).to(dtype).reshape(out, -1, self.group_size)
        return ((q - 8) * scale.t()[..., None] + zero.t()[..., None]).reshape(out, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "packed":
            y = _packed_call(torch.ops.aten._weight_int4pack_mm_for_cpu, x, self.qweight, self.group_size, self.scales_and_zeros)
        else:
            y = F.linear(x, self.dequantize(x.dtype))
        return y + self.bias if self.bias is not None else y


def describe_kernel(kernel: str, mode: str) -> str:
    """The kernel path in words, for the one log line at start."""
    if kernel == "packed":
        name = "_weight_int4pack_mm_for_cpu" if mode == "w4a16" else "_weight_int8pack_mm"
        return (f"PyTorch's packed {name} with bf16 activations "
                f"({torch.backends.cpu.get_cpu_capability()} dispatch; its float32 path is scalar)")
    return "dequantize per call + dense matmul (correct, not fast)"


def quantize_model(model: nn.Module, mode: str, group_size: int = 64, kernel: str = "auto") -> int:
    """Replace the decoder's projections and the LM head in place (``mode``: w8a16 or w4a16).

    The embedding stays in full precision (a tied LM head gets its own quantized copy, int8 in both modes).
    Layers whose input width is not a multiple of ``group_size`` stay as they are.
    Returns the number of layers replaced.
    """
    replaced, used = 0, None
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name not in TARGETS or not isinstance(child, nn.Linear):
                continue
            if mode == "w4a16" and child.in_features % group_size:
                log.warning("%s.%s: %d inputs is not a multiple of %d; left unquantized", name, child_name, child.in_features, group_size)
                continue
            # The LM head stays int8 in w4a16 (llama.cpp keeps its output layer at 6-8 bits too):
            # int4 there costs far more accuracy than the bandwidth it saves.
            if mode == "w8a16" or child_name == "lm_head":
                quantized = Int8Linear(child, kernel)
            else:
                quantized = Int4Linear(child, group_size, kernel)
            setattr(module, child_name, quantized)
            replaced, used = replaced + 1, quantized.kernel
    if used:
        log.info("quantized %d linear layers to %s; kernel: %s", replaced, mode, describe_kernel(used, mode))
    return replaced

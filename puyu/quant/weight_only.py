"""Weight-only quantized linear layers: int8 (w8a16) and group-wise int4 (w4a16), RTN at load.

Formats (what a calibration method such as AWQ produces too, so it can fill them):

* w8a16: ``qweight`` int8 ``[out, in]``, symmetric, one scale per output channel:
  ``w = q * scale[out]``.
* w4a16: asymmetric, one scale and zero per group of ``group_size`` input channels:
  ``w = (q - 8) * scale[g, out] + zero[g, out]`` with ``q`` in 0..15.  AWQ's
  per-channel activation scales fold into the preceding RMSNorm weight, so they
  need nothing new here.

On the CPU the matmuls run in PyTorch's packed kernels
(``_weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``), which read 1 or
0.5 bytes per weight instead of 2 — decode is bound by memory bandwidth, so that
is the speed-up.  Other devices dequantize per call (correct, not fast).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)
INT8_ROWS_PER_CALL = 12288
TARGETS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj", "lm_head")


class Int8Linear(nn.Module):
    """``y = x @ (q * scale).T + b`` with int8 ``q`` ``[out, in]`` and per-row ``scale``."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-8)
        self.register_buffer("qweight", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.bias = linear.bias

    def dequantize(self) -> torch.Tensor:
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            flat = x.reshape(-1, x.shape[-1])
            # A vocabulary-sized layer runs as slices of output rows: same values, and at 32 rows about 1.5x
            # faster than one call (the LM head: 23.6 -> 15.7 ms on 2 cores for 49152 x 576).
            parts = [torch.ops.aten._weight_int8pack_mm(flat, self.qweight[i : i + INT8_ROWS_PER_CALL],
                                                        self.scale[i : i + INT8_ROWS_PER_CALL])
                     for i in range(0, self.qweight.shape[0], INT8_ROWS_PER_CALL)]
            y = (parts[0] if len(parts) == 1 else torch.cat(parts, -1)).reshape(*x.shape[:-1], -1)
            return y + self.bias if self.bias is not None else y
        return F.linear(x, self.dequantize(), self.bias)


class Int4Linear(nn.Module):
    """Group-wise asymmetric int4; see the module docstring for the formula."""

    def __init__(self, linear: nn.Linear, group_size: int):
        super().__init__()
        out_features, in_features = linear.weight.shape
        self.group_size, self.in_features = group_size, in_features
        w = linear.weight.detach().float().reshape(out_features, in_features // group_size, group_size)
        low, high = w.amin(-1), w.amax(-1)
        scale = ((high - low) / 15).clamp(min=1e-8)
        q = ((w - low[..., None]) / scale[..., None]).round().clamp(0, 15).reshape(out_features, in_features).to(torch.int32)
        dtype = linear.weight.dtype
        # [in / group, out, 2]: the layout of PyTorch's int4 kernels.
        self.register_buffer("scales_and_zeros", torch.stack([scale, low + 8 * scale], -1).transpose(0, 1).contiguous().to(dtype))
        self.on_cpu = linear.weight.device.type == "cpu"
        if self.on_cpu:
            self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        else:
            self.register_buffer("qweight", q.to(torch.uint8))
        self.bias = linear.bias

    def dequantize_unpacked(self) -> torch.Tensor:
        scale, zero = self.scales_and_zeros.unbind(-1)  # [in / group, out]
        out = self.qweight.shape[0]
        q = self.qweight.to(scale.dtype).reshape(out, -1, self.group_size)
        return ((q - 8) * scale.t()[..., None] + zero.t()[..., None]).reshape(out, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.on_cpu:
            flat = x.reshape(-1, x.shape[-1])
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.qweight, self.group_size, self.scales_and_zeros)
            y = y.reshape(*x.shape[:-1], -1)
        else:
            y = F.linear(x, self.dequantize_unpacked())
        return y + self.bias if self.bias is not None else y


def quantize_model(model: nn.Module, mode: str, group_size: int = 64) -> int:
    """Replace the decoder's projections and the LM head in place (``mode``: w8a16 or w4a16).

    The embedding stays in full precision (a tied LM head gets its own quantized copy, int8 in both modes).
    Layers whose input width is not a multiple of ``group_size`` stay as they are.
    Returns the number of layers replaced.
    """
    replaced = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name not in TARGETS or not isinstance(child, nn.Linear):
                continue
            if mode == "w4a16" and child.in_features % group_size:
                log.warning("%s.%s: %d inputs is not a multiple of %d; left unquantized", name, child_name, child.in_features, group_size)
                continue
            # The LM head stays int8 in w4a16 (llama.cpp keeps its output layer at 6-8 bits too):
            # int4 there costs far more accuracy than the bandwidth it saves.
            quantized = Int8Linear(child) if mode == "w8a16" or child_name == "lm_head" else Int4Linear(child, group_size)
            setattr(module, child_name, quantized)
            replaced += 1
    log.info("quantized %d linear layers to %s", replaced, mode)
    return replaced

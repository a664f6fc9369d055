"""4-bit NormalFloat (NF4) weights for QLoRA, in plain PyTorch.

Why not bitsandbytes: on CPU its 4-bit layers (0.50.2) repack weights for
AVX512-BF16 on the first inference and silently stop passing gradients
afterwards, so QLoRA adapters stop learning.  This module is small, runs on any
device, and its backward is the one QLoRA needs.

Quantization (Dettmers et al., 2023): the weight ``W [out, in]`` is flattened
and cut into blocks of ``block_size`` values; each block is divided by its
absolute maximum and every value is replaced by the index of the nearest of the
16 NF4 levels (quantiles of a standard normal, rescaled to [-1, 1]); two 4-bit
indices share a byte.  Double quantization stores the block maxima themselves
as int8 around their mean, in groups of 256 with one fp32 scale each (a linear
int8 code rather than bitsandbytes' dynamic code; the memory saving is the
same: ~0.127 bits/parameter of constants instead of 0.5).

:class:`NF4Linear` dequantizes on the fly: forward ``y = x W^T + b``; backward
returns the input gradient ``dy W`` by dequantizing again instead of keeping the
full-precision weight alive, and never a weight gradient (the base is frozen).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])
_DQ_GROUP = 256


class NF4Linear(nn.Module):
    """A frozen linear layer stored as NF4 (see the module docstring).

    Args:
        linear: the full-precision layer to quantize (``weight [out, in]``, optional bias).
        block_size: values per absmax block (64 in QLoRA).
        double_quant: also quantize the block maxima to int8.
    """

    def __init__(self, linear: nn.Linear, block_size: int = 64, double_quant: bool = True):
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.block_size, self.double_quant = block_size, double_quant
        if weight.numel() % (2 * block_size):
            raise ValueError(f"NF4 needs the weight size ({weight.numel()}) to be a multiple of 2 * block_size ({2 * block_size})")
        blocks = weight.reshape(-1, block_size)
        absmax = blocks.abs().amax(dim=1).clamp_min(1e-12)
        levels = NF4_LEVELS.to(weight.device)
        midpoints = (levels[1:] + levels[:-1]) / 2
        index = torch.bucketize((blocks / absmax[:, None]).reshape(-1), midpoints).to(torch.uint8)
        self.register_buffer("packed", (index[0::2] << 4) | index[1::2])
        self.register_buffer("levels", levels.clone())
        if double_quant:
            offset = absmax.mean()
            centred = F.pad(absmax - offset, (0, (-absmax.numel()) % _DQ_GROUP)).reshape(-1, _DQ_GROUP)
            scale = centred.abs().amax(dim=1).clamp_min(1e-12) / 127
            self.register_buffer("absmax_q", torch.round(centred / scale[:, None]).to(torch.int8))
            self.register_buffer("absmax_scale", scale)
            self.register_buffer("absmax_offset", offset.reshape(1))
            self.num_blocks = absmax.numel()
        else:
            self.register_buffer("absmax", absmax)
        self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False) if linear.bias is not None else None

    def block_absmax(self) -> torch.Tensor:
        """The per-block maxima ``[out * in / block_size]`` in fp32."""
        if not self.double_quant:
            return self.absmax
        values = self.absmax_q.float() * self.absmax_scale[:, None]
        return values.reshape(-1)[: self.num_blocks] + self.absmax_offset

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight ``[out, in]`` in ``dtype``."""
        index = torch.stack([self.packed >> 4, self.packed & 15], dim=1).reshape(-1).long()
        blocks = self.levels[index].reshape(-1, self.block_size) * self.block_absmax()[:, None]
        return blocks.reshape(self.out_features, self.in_features).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in] -> [..., out]``, computed in the autocast dtype when autocast is on."""
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        y = _DequantMatmul.apply(x.to(dtype), self)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"block_size={self.block_size}, double_quant={self.double_quant}")


class _DequantMatmul(torch.autograd.Function):
    """``x W^T`` whose backward re-dequantizes ``W`` for ``dx = dy W`` (no saved weight, no weight gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: NF4Linear) -> torch.Tensor:
        ctx.layer = layer
        with torch.autocast(x.device.type, enabled=False):
            return x @ layer.dequantize(x.dtype).t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        with torch.autocast(grad.device.type, enabled=False):
            return grad @ ctx.layer.dequantize(grad.dtype), None

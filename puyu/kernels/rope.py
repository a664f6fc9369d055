"""Rotary position embedding for training, forward and backward in one pass each (``rope.c``, built by
:mod:`puyu.kernels.build`).

:func:`rope` — ``x * cos + rotate_half(x) * sin`` for ``x`` ``[B, T, heads, D]`` and tables ``[B, T, D]`` (the model's
:func:`puyu.model.rope.apply_rope` before the heads move ahead of the positions), differentiable in ``x``, with the
torch op ``puyu::rope`` both ways.  :func:`usable` says whether a call can take it.
"""

from __future__ import annotations

import torch

from puyu.kernels import build
from puyu.kernels.build import LIBRARY

_DTYPES = (torch.float32, torch.bfloat16)


@torch.library.register_fake("puyu::rope", lib=LIBRARY)
def _(x, cos, sin, backward, bf16_out):
    return x.new_empty(x.shape, dtype=torch.bfloat16 if bf16_out else torch.float32)


_OP = torch.ops.puyu.rope.default


def usable(x: torch.Tensor, cos: torch.Tensor) -> bool:
    """Whether the kernel takes ``x`` and the tables: float32 or bf16 on a CPU where the kernels run, tables not trained."""
    return (x.device.type == "cpu" and x.dtype in _DTYPES and cos.dtype in _DTYPES and not cos.requires_grad
            and build.available())


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.x_bf16 = x.dtype == torch.bfloat16
        return _OP(x, cos, sin, False, ctx.x_bf16 and cos.dtype == torch.bfloat16)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _OP(grad, cos, sin, True, ctx.x_bf16), None, None


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, T, heads, D]`` rotated by ``cos``/``sin`` ``[B, T, D]``; bf16 when ``x`` and the tables are, else float32."""
    return _Rope.apply(x, cos, sin)

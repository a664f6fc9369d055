"""RMSNorm's forward and backward for training, one pass each over the activations (``rms_norm.c``, built by
:mod:`puyu.kernels.build`).

:func:`rms_norm` — ``w * x / sqrt(mean(x^2) + eps)`` with the torch ops ``puyu::rms_norm_forward`` and
``puyu::rms_norm_backward`` as forward and backward; float32 or bf16 ``x`` and ``w``, the dtypes of the model's torch
form (:class:`puyu.model.transformer.RMSNorm`).  :func:`usable` says whether a call can take it.
"""

from __future__ import annotations

import torch

from puyu.kernels import build
from puyu.kernels.build import LIBRARY

_DTYPES = (torch.float32, torch.bfloat16)


@torch.library.register_fake("puyu::rms_norm_forward", lib=LIBRARY)
def _(x, weight, eps):
    dtype = torch.bfloat16 if x.dtype == weight.dtype == torch.bfloat16 else torch.float32
    return x.new_empty(x.shape, dtype=dtype), x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)


@torch.library.register_fake("puyu::rms_norm_backward", lib=LIBRARY)
def _(grad, x, weight, rstd):
    return torch.empty_like(x), x.new_empty(x.shape[-1], dtype=torch.float32)


_FORWARD, _BACKWARD = torch.ops.puyu.rms_norm_forward.default, torch.ops.puyu.rms_norm_backward.default


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel takes ``x`` and ``weight``: float32 or bf16 on a CPU where the kernels run."""
    return x.device.type == "cpu" and x.dtype in _DTYPES and weight.dtype in _DTYPES and build.available()


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x = x.contiguous()
        y, rstd = _FORWARD(x, weight.contiguous(), eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = _BACKWARD(grad, x, weight.contiguous(), rstd)
        return dx, dw.to(weight.dtype) if ctx.needs_input_grad[1] else None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / sqrt(mean(x^2, -1) + eps)`` (the normalised ``x`` rounded to ``x``'s dtype first), differentiable
    in ``x`` and ``weight``; the result is bf16 when both are, else float32."""
    return _RMSNorm.apply(x, weight, eps)

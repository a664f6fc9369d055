"""Causal attention within spans for training, forward and backward (``span_attention.c``, built by
:mod:`puyu.kernels.build`).

:func:`span_attention` — for ``q`` ``[B, T, H, D]`` and ``k``/``v`` ``[B, T, KV, D]`` (the projections' layout, before
the heads move ahead of the positions), each query attends causally to the keys of its own span: every row of a
packed batch holds documents one after another (:class:`puyu.model.transformer.CausalBlocks`), or one span per row
for plain causal rows.  Differentiable in ``q``, ``k`` and ``v`` through the torch ops ``puyu::span_attention`` and
``puyu::span_attention_backward``; float32 inside (the same as the model's fp32 attention of short spans under bf16
autocast).  :func:`usable` says whether a call can take it.
"""

from __future__ import annotations

import torch

from puyu.kernels import build
from puyu.kernels.build import LIBRARY

# Spans up to this many positions: beyond, PyTorch's flash attention (blocked for long sequences, AVX-512 where the CPU
# has it) is as fast (forward and backward, 4 heads of 64 on 2 Xeon cores: 8 rows of one 256-position span 16.9 ms in
# SDPA against 13.9 here, 2 rows of 512 about even).
LONGEST_SPAN = 512


@torch.library.register_fake("puyu::span_attention", lib=LIBRARY)
def _(q, k, v, spans):
    return torch.empty_like(q), q.new_empty(q.shape[:3])


@torch.library.register_fake("puyu::span_attention_backward", lib=LIBRARY)
def _(grad, q, k, v, out, lse, spans):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


_FORWARD, _BACKWARD = torch.ops.puyu.span_attention.default, torch.ops.puyu.span_attention_backward.default


def usable(q: torch.Tensor, k: torch.Tensor, longest: int, spans: int) -> bool:
    """Whether the kernel takes ``q`` ``[B, T, H, D]`` and ``k`` ``[B, T, KV, D]`` with ``spans`` spans, the longest of
    ``longest`` positions: a CPU where the kernels run, ``D`` a multiple of 8, spans of at most :data:`LONGEST_SPAN`,
    and a task (a span and a key/value head) for every thread."""
    return (q.device.type == "cpu" and q.shape[-1] % 8 == 0 and q.shape[2] % k.shape[2] == 0 and longest <= LONGEST_SPAN
            and spans * k.shape[2] >= torch.get_num_threads() and build.available())


def spans_tensor(rows: list[list[tuple[int, int]]]) -> torch.Tensor:
    """``rows[b]``'s ``(start, end)`` spans as the kernel's int64 ``[N, 3]`` (row, start, end)."""
    return torch.tensor([(b, s, e) for b, spans in enumerate(rows) for s, e in spans], dtype=torch.int64).reshape(-1, 3)


class _SpanAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        ctx.dtypes = q.dtype, k.dtype, v.dtype
        q, k, v = (x.float().contiguous() for x in (q, k, v))
        out, lse = _FORWARD(q, k, v, spans)
        ctx.save_for_backward(q, k, v, out, lse, spans)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, k, v, out, lse, spans = ctx.saved_tensors
        grads = _BACKWARD(grad, q, k, v, out, lse, spans)
        return *(g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)), None


def span_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, D]`` float32: each query of ``q`` attends, scaled by ``1/sqrt(D)``, to the keys ``k`` and values
    ``v`` (grouped-query: ``H`` a multiple of ``KV``) at its own and earlier positions of its span; ``spans`` as
    :func:`spans_tensor` makes them.  Positions outside every span get zeros.  bf16 inputs are computed in float32;
    their gradients come back in the inputs' dtypes."""
    return _SpanAttention.apply(q, k, v, spans)

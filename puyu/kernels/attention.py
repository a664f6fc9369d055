"""Decode attention straight from the paged key/value cache (``attention.c``, built by :mod:`puyu.kernels.build`).

:func:`paged_decode_attention` — each query row over its own cached keys and values, read where they lie in the
cache instead of gathered into copies (see ``attention.c``): the torch op ``puyu::paged_decode_attention``, opaque to
``torch.compile``.  :func:`usable` says whether a cache can take it.
"""

from __future__ import annotations

import torch

from puyu.kernels import build
from puyu.kernels.build import LIBRARY


@torch.library.register_fake("puyu::paged_decode_attention", lib=LIBRARY)
def _(q, keys, values, slots, lengths, rows=None):
    return torch.empty_like(q)


_OP = torch.ops.puyu.paged_decode_attention.default


def usable(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a float cache of ``dtype`` on ``device`` can use the kernel (float32 on a CPU where the kernels run)."""
    return dtype == torch.float32 and device.type == "cpu" and build.available()


def paged_decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor,
                           lengths: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``q`` ``[B, H, D]`` over one layer's ``keys``/``values`` ``[S, KV, D]``: row ``b`` attends the first
    ``lengths[b]`` of its ``slots`` ``[B, L]`` -> ``[B, H, D]`` (softmax scale ``1/sqrt(D)``); with ``rows`` ``[B]``,
    row ``b`` attends the first ``lengths[b]`` of ``slots[rows[b]]`` (``slots`` ``[C, L]``: one row per sequence, which
    its prompt chunk's or draft's query rows share with their own lengths)."""
    return _OP(q, keys, values, slots, lengths, rows)

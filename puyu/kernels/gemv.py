"""Weight-only int4/int8 matrix products on x86 CPUs (``gemv.c``, built and loaded by :mod:`puyu.kernels.build`).

- :func:`pack_int4` / :func:`pack_int8` (and their inverses) — weights in the kernels' layouts: tiles of 8 output
  rows (see ``gemv.c``).
- :func:`int4_matmul` / :func:`int8_matmul` — ``x [..., K]`` (any float dtype) times those layouts, returning
  ``x``'s dtype: the torch ops ``puyu::int4_matmul`` / ``puyu::int8_matmul``, opaque to ``torch.compile``.  They run
  where :func:`puyu.kernels.build.available` says so.
"""

from __future__ import annotations

import torch

from puyu.kernels.build import LIBRARY

NIBBLE_SHIFTS = (0, 16, 4, 20, 8, 24, 12, 28)  # int4 layout: input 2i of a chunk of 8 at bit 4i, input 2i + 1 at bit 16 + 4i


def pack_int4(q: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``q`` ``[N, K]`` (0..15) with ``scale`` and ``low`` ``[N, K / G]`` (``w = q * scale + low``) in the
    kernel's int4 layout (``gemv.c``): ``(codes int32 [N8/8, K/8, 8], table float16 [N8/8, K/G, 2, 8])``."""
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


@torch.library.register_fake("puyu::int4_matmul", lib=LIBRARY)
def _(x, codes, table, group_size, n, activation_bits=16):
    return x.new_empty(*x.shape[:-1], n)


@torch.library.register_fake("puyu::int8_matmul", lib=LIBRARY)
def _(x, codes, scale, n):
    return x.new_empty(*x.shape[:-1], n)


_INT4, _INT8 = torch.ops.puyu.int4_matmul.default, torch.ops.puyu.int8_matmul.default


def int4_matmul(x: torch.Tensor, codes: torch.Tensor, table: torch.Tensor, group_size: int, n: int,
                activation_bits: int = 16) -> torch.Tensor:
    """``x @ W.T`` for the ``n`` output rows of :func:`pack_int4`'s ``codes`` and ``table``, the activations quantized
    per block of 32 to int16 (``activation_bits`` 16, w4a16) or int8 (8, w4a8: llama.cpp's Q4_1 x Q8_1 scheme)."""
    return _INT4(x, codes, table, group_size, n, activation_bits)


def quantize_activations(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` ``[..., K]`` through the kernels' activation quantization and back (blocks of 32, symmetric, round to
    nearest even): the reference the kernels are tested against, and what other devices compute for w4a8."""
    top = 2 ** (bits - 1) - 1
    blocks = x.float().unflatten(-1, (-1, 32))
    amax = blocks.abs().amax(-1, keepdim=True)
    codes = torch.where(amax > 0, blocks * (top / amax), 0).round()
    return (codes * (amax / top)).flatten(-2).to(x.dtype)


def int8_matmul(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
    """``x @ W.T`` for the ``n`` output rows of :func:`pack_int8`'s ``codes`` and ``scale``."""
    return _INT8(x, codes, scale, n)

"""KV-cache quantization codec: LMDeploy's ``quant_policy`` 8 and 4 (per token, per head, asymmetric).

Every key or value vector of one token and one KV head (``head_dim`` numbers)
is stored as unsigned codes ``q`` with its own scale and zero point::

    x ≈ q * scale + zero      scale = (max - min) / (2**bits - 1),  zero = min

``int8``: one code a byte; ``int4``: two codes a byte (even dimensions in the
low nibble).  The scale and zero sit beside the codes, as two float16 numbers
in the last four bytes of the same row, so one row of ``head_dim + 4`` (int8)
or ``head_dim / 2 + 4`` (int4) bytes holds a whole vector and one gather reads
it (:meth:`~puyu.engine.paged_cache.PagedKVCache.gather`).  Codes are computed
against the float16-rounded scale and zero, so decoding reproduces what was
encoded up to half a step.  Per token means a stored vector never changes once
written: batching, prefix caching and speculative drafts see the same bytes a
lone sequence would.

Why not a library: the layout has to match the paged cache's slots; the math
is two lines.
"""

from __future__ import annotations

import torch

from puyu.errors import ConfigError

KV_QUANT = {"none": None, "int8": 8, "int4": 4}
META_BYTES = 4  # float16 scale + float16 zero per token and head


def row_bytes(head_dim: int, bits: int) -> int:
    """Bytes of one stored vector (codes, then scale and zero)."""
    return head_dim * bits // 8 + META_BYTES


def check_head_dim(head_dim: int, bits: int | None) -> None:
    """The float16 scale and zero must start at an even byte: an even number of code bytes."""
    if bits is not None and (head_dim * bits // 8) % 2:
        raise ConfigError(f"kv_quant=int{bits} needs head_dim divisible by {16 // bits}, this model's is {head_dim}; "
                          f"use {'kv_quant=int8' if bits == 4 and head_dim % 2 == 0 else 'kv_quant=none'}")


def encode(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` ``[..., head_dim]`` float -> ``[..., row_bytes]`` uint8 (codes, then float16 scale and zero)."""
    levels = 2**bits - 1
    x = x.float()
    low, high = x.aminmax(dim=-1, keepdim=True)
    scale = ((high - low) / levels).clamp(min=1e-6).half()
    zero = low.half()
    q = ((x - zero.float()) / scale.float()).round_().clamp_(0, levels).to(torch.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return torch.cat([q, torch.cat([scale, zero], -1).view(torch.uint8)], -1)


def decode(raw: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """``raw`` ``[..., row_bytes]`` uint8 -> ``[..., head_dim]`` in ``dtype``."""
    codes = raw[..., :-META_BYTES]
    meta = raw[..., -META_BYTES:].view(torch.float16).float()  # [..., 2]: scale, zero
    if bits == 4:
        codes = torch.stack((codes & 15, codes >> 4), -1).flatten(-2)
    # float32 multiply and add, then one cast: a broadcast addcmul (and any bf16 arithmetic) takes CPU paths several
    # times slower, which made an int8 cache halve bf16 decode speed.
    return codes.float().mul_(meta[..., :1]).add_(meta[..., 1:]).to(dtype)

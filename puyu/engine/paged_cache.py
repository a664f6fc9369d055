"""Paged KV storage and the per-step attention over it.

:class:`PagedKVCache` holds, per layer, keys and values for ``num_blocks *
block_size`` token slots (``[slots, kv_heads, head_dim]``); slot ``b * block_size
+ i`` is position ``i`` of block ``b``.  :class:`PagedBatch` describes one engine
step — all scheduled tokens of all sequences flattened into one row — and
implements the model's cache protocol (``begin``/``attend``/``end``, see
:class:`puyu.model.transformer.KVCache`): it writes the new keys/values to their
slots, then attends single-token (decode) sequences together in one batched
call, each multi-token (prefill) chunk on its own, causally, and draft-verifying
rows one by one.

Gathering a sequence's keys from its blocks copies them once per layer; a
fused paged-attention kernel would avoid that, which plain PyTorch on the CPU
does not offer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from puyu.model.config import ModelConfig
from puyu.model.transformer import attention


class PagedKVCache:
    """Key/value slots for every layer; sized in blocks."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device):
        slots = num_blocks * block_size
        shape = (slots, config.num_kv_heads, config.head_dim)
        # torch.empty: slots are only ever read after being written.
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.num_blocks, self.block_size = num_blocks, block_size

    @staticmethod
    def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        return 2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * torch.finfo(dtype).bits // 8


def _gather(store: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``store[slots]``: ``[slots, KV, D]`` by ``[...]`` -> ``[..., KV, D]``.

    Eager, ``index_select`` (whole-row copies) is several times faster on the CPU
    than advanced indexing; under ``torch.compile`` the indexing form is the one
    Inductor fuses into what reads it (about 15% faster decode steps).
    """
    if torch.compiler.is_compiling():
        return store[slots]
    return store.index_select(0, slots.reshape(-1)).view(*slots.shape, *store.shape[1:])


@dataclass
class PrefillChunk:
    """``start:end`` of the flattened step row; the chunk's first position is ``past`` (0 = fresh prompt)."""

    start: int
    end: int
    past: int
    context_slots: torch.Tensor | None  # slots of positions [0, past + n) when past > 0


class PagedBatch:
    """One step's attention metadata over a :class:`PagedKVCache` (see the module docstring).

    Args:
        cache: the storage.
        slot_mapping: ``[N]`` slot of every scheduled token.
        num_decodes: ``Bd``: the step row starts with this many single-token (decode) sequences.
        decode_slots: ``[Bd, Lmax]`` their context slots (padded with 0).
        decode_mask: ``[Bd, 1, 1, Lmax]`` bool, or None for a single sequence.
        prefills: the multi-token chunks, after the decodes.
        single_rows: ``(row, context slots)`` of tokens attended one by one over exactly their own context
            (speculative draft rows: computed as a lone decode step computes them).
    """

    def __init__(self, cache: PagedKVCache, slot_mapping: torch.Tensor, num_decodes: int,
                 decode_slots: torch.Tensor | None, decode_mask: torch.Tensor | None, prefills: list[PrefillChunk],
                 single_rows: list[tuple[int, torch.Tensor]] = ()):
        self.cache = cache
        self.slot_mapping = slot_mapping
        self.num_decodes, self.decode_slots, self.decode_mask = num_decodes, decode_slots, decode_mask
        self.prefills = prefills
        self.single_rows = single_rows

    def begin(self, new: int, device: torch.device) -> None:
        pass

    def end(self, new: int) -> None:
        pass

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q`` ``[1, H, N, D]``, ``k``/``v`` ``[1, KV, N, D]`` of the step row -> ``[1, H, N, D]``."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys.index_copy_(0, self.slot_mapping, k[0].transpose(0, 1))
        values.index_copy_(0, self.slot_mapping, v[0].transpose(0, 1))
        out = torch.empty_like(q)
        bd = self.num_decodes
        if bd:
            qd = q[0, :, :bd].transpose(0, 1).unsqueeze(2)  # [Bd, H, 1, D]
            kd = _gather(keys, self.decode_slots).permute(0, 2, 1, 3)  # [Bd, KV, Lmax, D]
            vd = _gather(values, self.decode_slots).permute(0, 2, 1, 3)
            out[0, :, :bd] = attention(qd, kd, vd, self.decode_mask, causal=False).squeeze(2).transpose(0, 1)
        for row, context in self.single_rows:
            # Exactly a lone sequence's decode step (no padding, no mask): SDPA's sums depend on the key length.
            qs = q[0, :, row : row + 1].transpose(0, 1).unsqueeze(2)
            ks = _gather(keys, context[None]).permute(0, 2, 1, 3)
            vs = _gather(values, context[None]).permute(0, 2, 1, 3)
            out[0, :, row] = attention(qs, ks, vs, None, causal=False)[0, :, 0]
        for chunk in self.prefills:
            qp = q[:, :, chunk.start : chunk.end]
            if chunk.past == 0:
                op = attention(qp, k[:, :, chunk.start : chunk.end], v[:, :, chunk.start : chunk.end], None, causal=True)
            else:
                n = chunk.end - chunk.start
                kp = _gather(keys, chunk.context_slots).transpose(0, 1).unsqueeze(0)
                vp = _gather(values, chunk.context_slots).transpose(0, 1).unsqueeze(0)
                mask = torch.ones(n, chunk.past + n, dtype=torch.bool, device=q.device).tril(diagonal=chunk.past)
                op = attention(qp, kp, vp, mask[None, None], causal=False)
            out[:, :, chunk.start : chunk.end] = op
        return out

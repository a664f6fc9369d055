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

On a float32 cache on a CPU where puyu's kernels run (a ``direct`` cache), every
row of a step (decode, prompt chunk and draft tokens alike) attends straight from
the slots through one kernel call (:class:`RowBatch`, :mod:`puyu.kernels.attention`:
each key and value row read where it lies, each row computed alone as a lone
decode step computes it, so neither batching nor how a prompt is chunked changes
its bits, and the step is tensors only: the compiled step covers prompts too).
Elsewhere (:class:`PagedBatch`) prompt chunks attend with SDPA, over a gathered
copy of their context when they continue one, and decode rows over gathered
copies too.

With ``kv_quant`` (``int8``/``int4``, LMDeploy's ``quant_policy`` 8/4) the
slots hold uint8 rows of :mod:`puyu.engine.kv_quant` instead: keys and values
are quantized as they are written and dequantized as they are gathered, so
attention always computes in the model's dtype.  As in LMDeploy, a fresh
prompt chunk attends over its own float keys and values, and everything read
back from the cache (decodes, draft rows, later chunks of a long prompt,
prefix-cache hits) is the dequantized copy.  Measured on the built-in model
(32 chat prompts, 16 greedy tokens): attending over the dequantized copy in
the fresh chunk as well, which would make outputs independent of how a prompt
is chunked or found in the prefix cache, kept the first 8 tokens equal to the
float cache's for 28/32 prompts with int8 (31/32 this way) and 4/32 with int4
(11/32 this way).  Batching still never changes an output: a vector's bytes
depend on that vector alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from puyu.engine.kv_quant import KV_QUANT, check_head_dim, decode, encode, row_bytes
from puyu.kernels.attention import paged_decode_attention, usable
from puyu.model.config import ModelConfig
from puyu.model.transformer import attention


def _gather(store: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``store[slots]``: ``[slots, KV, W]`` by ``[...]`` -> ``[..., KV, W]``.

    Eager, ``index_select`` (whole-row copies) is several times faster on the CPU
    than advanced indexing; under ``torch.compile`` the indexing form is the one
    Inductor fuses into what reads it (about 15% faster decode steps).
    """
    if torch.compiler.is_compiling():
        return store[slots]
    return store.index_select(0, slots.reshape(-1)).view(*slots.shape, *store.shape[1:])


class PagedKVCache:
    """Key/value slots for every layer; sized in blocks (``kv_quant``: none, int8 or int4)."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device,
                 kv_quant: str = "none"):
        self.bits = KV_QUANT[kv_quant]
        check_head_dim(config.head_dim, self.bits)
        slots = num_blocks * block_size
        width, store = (config.head_dim, dtype) if self.bits is None else (row_bytes(config.head_dim, self.bits), torch.uint8)
        shape = (slots, config.num_kv_heads, width)
        # torch.empty: slots are only ever read after being written.
        self.keys = [torch.empty(shape, dtype=store, device=device) for _ in range(config.num_layers)]
        self.values = [torch.empty(shape, dtype=store, device=device) for _ in range(config.num_layers)]
        self.num_blocks, self.block_size, self.dtype, self.kv_quant = num_blocks, block_size, dtype, kv_quant
        # Decode rows attend straight from the slots (see the module docstring); else gathered copies and SDPA.
        self.direct = self.bits is None and usable(dtype, torch.device(device))

    @staticmethod
    def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype, kv_quant: str = "none") -> int:
        bits = KV_QUANT[kv_quant]
        per_head = config.head_dim * dtype.itemsize if bits is None else row_bytes(config.head_dim, bits)
        return 2 * config.num_layers * block_size * config.num_kv_heads * per_head

    @property
    def storage_dtype(self) -> str:
        """What the slots hold, in words (for logs and metrics)."""
        return str(self.dtype).removeprefix("torch.") if self.bits is None else f"int{self.bits}+fp16 scale/zero"

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k``/``v`` ``[N, KV, D]`` at ``slots`` ``[N]`` (quantized when ``kv_quant`` is set)."""
        if self.bits is not None:
            k, v = encode(k, self.bits), encode(v, self.bits)
        self.keys[layer].index_copy_(0, slots, k)
        self.values[layer].index_copy_(0, slots, v)

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values at ``slots`` (any shape ``[...]``) -> two ``[..., KV, D]`` tensors in the model's dtype."""
        k, v = _gather(self.keys[layer], slots), _gather(self.values[layer], slots)
        if self.bits is not None:
            k, v = decode(k, self.bits, self.dtype), decode(v, self.bits, self.dtype)
        return k, v


@dataclass
class PrefillChunk:
    """``start:end`` of the flattened step row; the chunk's first position is ``past`` (0 = fresh prompt)."""

    start: int
    end: int
    past: int
    context_slots: torch.Tensor | None  # slots of positions [0, past + n) when past > 0


class _Step:
    """The cache protocol's hooks a paged step needs none of (its slots are set before the model runs)."""

    def begin(self, new: int, device: torch.device) -> None:
        pass

    def end(self, new: int) -> None:
        pass


class PagedBatch(_Step):
    """One step's attention metadata over a :class:`PagedKVCache` that is not ``direct`` (see the module docstring).

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
                 decode_slots: torch.Tensor | None, decode_mask: torch.Tensor | None,
                 prefills: list[PrefillChunk], single_rows: list[tuple[int, torch.Tensor]] = ()):
        self.cache = cache
        self.slot_mapping = slot_mapping
        self.num_decodes, self.decode_slots, self.decode_mask = num_decodes, decode_slots, decode_mask
        self.prefills = prefills
        self.single_rows = single_rows

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q`` ``[1, H, N, D]``, ``k``/``v`` ``[1, KV, N, D]`` of the step row -> ``[1, H, N, D]``."""
        cache = self.cache
        cache.write(layer, self.slot_mapping, k[0].transpose(0, 1), v[0].transpose(0, 1))
        out = torch.empty_like(q)
        bd = self.num_decodes
        if bd:
            qd = q[0, :, :bd].transpose(0, 1).unsqueeze(2)  # [Bd, H, 1, D]
            kd, vd = (t.permute(0, 2, 1, 3) for t in cache.gather(layer, self.decode_slots))  # [Bd, KV, Lmax, D]
            out[0, :, :bd] = attention(qd, kd, vd, self.decode_mask, causal=False).squeeze(2).transpose(0, 1)
        for row, context in self.single_rows:
            # Exactly a lone sequence's decode step (no padding, no mask): SDPA's sums depend on the key length.
            qs = q[0, :, row : row + 1].transpose(0, 1).unsqueeze(2)
            ks, vs = (t.permute(0, 2, 1, 3) for t in cache.gather(layer, context[None]))
            out[0, :, row] = attention(qs, ks, vs, None, causal=False)[0, :, 0]
        for chunk in self.prefills:
            qp = q[:, :, chunk.start : chunk.end]
            if chunk.past == 0:
                op = attention(qp, k[:, :, chunk.start : chunk.end], v[:, :, chunk.start : chunk.end], None, causal=True)
            else:
                n = chunk.end - chunk.start
                kp, vp = (t.transpose(0, 1).unsqueeze(0) for t in cache.gather(layer, chunk.context_slots))
                mask = torch.ones(n, chunk.past + n, dtype=torch.bool, device=q.device).tril(diagonal=chunk.past)
                op = attention(qp, kp, vp, mask[None, None], causal=False)
            out[:, :, chunk.start : chunk.end] = op
        return out


class RowBatch(_Step):
    """One step's attention over a ``direct`` cache: every row attends alone over its own context.

    Args:
        cache: the storage (``direct``).
        slot_mapping: ``[N]`` slot of every scheduled token.
        contexts: ``[C, L]`` the slots of each scheduled sequence's context up to its last token this step (padded).
        lengths: ``[N]`` how many of its sequence's context slots each row attends (its position + 1).
        rows: ``[N]`` which row of ``contexts`` each row's sequence is.
    """

    def __init__(self, cache: PagedKVCache, slot_mapping: torch.Tensor, contexts: torch.Tensor, lengths: torch.Tensor,
                 rows: torch.Tensor):
        self.cache, self.slot_mapping, self.contexts, self.lengths, self.rows = cache, slot_mapping, contexts, lengths, rows

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q`` ``[1, H, N, D]``, ``k``/``v`` ``[1, KV, N, D]`` of the step row -> ``[1, H, N, D]``."""
        cache = self.cache
        cache.write(layer, self.slot_mapping, k[0].transpose(0, 1), v[0].transpose(0, 1))
        out = paged_decode_attention(q[0].transpose(0, 1), cache.keys[layer], cache.values[layer], self.contexts, self.lengths, self.rows)
        return out.transpose(0, 1)[None]

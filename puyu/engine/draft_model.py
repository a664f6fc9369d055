"""Speculative decoding with a draft model: a cheaper model decodes the draft, the served model verifies it.

The draft model is any model with the served model's vocabulary: a smaller
model of the same family (SmolLM2-135M for SmolLM2-1.7B, Qwen2.5-0.5B for
Qwen2.5-7B), or the served model itself made cheaper (the float32 or bf16 model
served exactly, drafted by its own int4 copy: ``draft_quant``).  It keeps a
paged KV cache of its own, with a *shadow* sequence per drafting request; every
engine step, :meth:`DraftModel.propose_all` runs the draft model over all
drafting sequences together: one step that catches each shadow up on the
tokens the served model accepted since (a whole prompt the first time), then one
decode step per further draft token.  A shadow keeps the keys and values of
the tokens both models agree on; those of rejected draft tokens are rewritten
when the shadow catches up.  Verification is :class:`~puyu.engine.speculative.Proposer`'s:
greedy outputs are the served model's own, token for token.

Why not a library: vLLM's and LMDeploy's draft-model proposers live inside
their CUDA engines; this one reuses puyu's runner (the draft model's steps run
compiled like the served model's) and block manager.
"""

from __future__ import annotations

from dataclasses import dataclass

from puyu.engine.blocks import BlockManager
from puyu.engine.paged_cache import PagedKVCache
from puyu.engine.runner import ModelRunner
from puyu.engine.sequence import Sequence
from puyu.engine.speculative import Proposer
from puyu.model.transformer import Transformer


@dataclass
class _Shadow:
    """The draft model's copy of one request: ``seq.tokens[:synced]`` are the request's tokens when last caught up."""

    seq: Sequence
    synced: int = 0


class DraftModel(Proposer):
    """Drafts ``k`` tokens at most with ``model``, whose KV cache holds ``num_tokens`` tokens in blocks of ``block_size``."""

    def __init__(self, model: Transformer, k: int, num_tokens: int, block_size: int, compile: bool = False):
        self.k, self.max_len = k, model.config.max_position_embeddings
        num_blocks = -(-num_tokens // block_size)
        self.cache = PagedKVCache(model.config, num_blocks, block_size, model.dtype, model.device)
        self.blocks = BlockManager(num_blocks, block_size, prefix_caching=False)
        self.runner = ModelRunner(model, self.cache, compile)
        self.shadows: dict[int, _Shadow] = {}

    def eligible(self, seq: Sequence) -> bool:
        return seq.images is None and super().eligible(seq)  # the draft model cannot see a prompt's images

    def propose_all(self, requests: list[tuple[Sequence, int]]) -> list[list[int]]:
        drafts = {id(seq): [] for seq, _ in requests}
        limits = [(seq, min(limit, self.max_len - len(seq.tokens))) for seq, limit in requests]  # the draft's positions
        active = [(seq, self._catch_up(seq), limit) for seq, limit in limits if limit > 0 and self.eligible(seq)]
        while active:
            room = []
            for seq, shadow, limit in active:
                if self.blocks.extend(shadow.seq.block_table, len(shadow.seq.tokens)):
                    room.append((seq, shadow, limit))
                else:
                    self.forget(seq)  # the draft cache is full: this request goes on with the draft so far
            active = room
            results = self.runner.run([(shadow.seq, shadow.seq.remaining) for _, shadow, _ in active]) if active else []
            by_shadow = {id(result.seq): result for result in results}
            for seq, shadow, _ in active:
                result = by_shadow[id(shadow.seq)]
                shadow.seq.num_computed += result.computed
                shadow.seq.tokens += result.tokens
                drafts[id(seq)] += result.tokens
            active = [(seq, shadow, limit) for seq, shadow, limit in active if len(drafts[id(seq)]) < limit]
        return [drafts[id(seq)] for seq, _ in requests]

    def _catch_up(self, seq: Sequence) -> _Shadow:
        """``seq``'s shadow with the request's tokens, its computed length cut back to what still agrees with them."""
        shadow = self.shadows.get(id(seq))
        if shadow is None:
            shadow = self.shadows[id(seq)] = _Shadow(Sequence(seq.request_id, [], seq.output, 0, sink=None))
        mine, theirs = shadow.seq.tokens, seq.tokens
        agree = shadow.synced  # both only appended since: the tokens before it agree
        while agree < min(shadow.seq.num_computed, len(theirs)) and mine[agree] == theirs[agree]:
            agree += 1
        shadow.seq.num_computed = min(shadow.seq.num_computed, agree)
        shadow.seq.tokens, shadow.synced = list(theirs), len(theirs)
        return shadow

    def forget(self, seq: Sequence) -> None:
        shadow = self.shadows.pop(id(seq), None)
        if shadow is not None:
            self.blocks.release(shadow.seq.block_table)

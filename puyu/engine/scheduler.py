"""Continuous batching: which sequences run in the next step, and how many tokens each.

Every step (:meth:`Scheduler.schedule`) first gives each running sequence its
next tokens (decodes first, one token each; then the next chunk of prompts
still being prefilled), then admits waiting requests in arrival order while the step's
token budget (``max_num_batched_tokens``), the batch cap (``max_num_seqs``)
and free KV blocks allow — so new requests join the running batch at every
step, prefill and decode mixed.  A waiting request first takes the cached
blocks of its longest cached prefix.  When a running sequence needs a block
and none is free, the most recently arrived running sequence is preempted:
its blocks are freed and it waits at the front of the queue to be recomputed.
A sequence that cannot get a block even alone ends with ``length``: the cache
is smaller than its context.  Never an out-of-memory crash.

With a speculative proposer, decoding sequences may also get drafts (a
drafted sequence's step computes ``1 + len(draft)`` tokens), asked for all at
once after the prompts were admitted (a draft model decodes them as one batch),
only from the step's spare token budget and free blocks: a draft never delays a
prompt or preempts anything.

After the step, :meth:`Scheduler.computed` records the new cache contents and
offers full blocks to the prefix cache; :meth:`Scheduler.finish` frees a
sequence's blocks.
"""

from __future__ import annotations

import logging
from collections import deque

from puyu.engine.blocks import BlockManager, block_hashes
from puyu.engine.sequence import Sequence, Status
from puyu.engine.speculative import Proposer

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int, proposer: Proposer | None = None):
        self.blocks, self.proposer = blocks, proposer
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _grow(self, seq: Sequence, upto: int) -> bool:
        """Give ``seq`` blocks for ``upto`` tokens; False when not enough are free."""
        return self.blocks.extend(seq.block_table, upto)

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq.block_table)
        seq.block_table, seq.num_computed, seq.registered_blocks = [], 0, 0
        seq.status = Status.WAITING
        self.running.remove(seq)
        self.waiting.appendleft(seq)
        self.preemptions += 1
        log.debug("preempted %s (recomputed later)", seq.request_id)

    def finish(self, seq: Sequence) -> None:
        """Free a finished or aborted sequence's blocks and forget it."""
        if self.proposer is not None:
            self.proposer.forget(seq)
        self.blocks.release(seq.block_table)
        seq.block_table = []
        seq.status = Status.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def schedule(self) -> tuple[list[tuple[Sequence, int]], list[Sequence]]:
        """``([(sequence, tokens to compute)], [sequences out of cache room])`` for the next step."""
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []
        starved: list[Sequence] = []
        decoding: list[int] = []  # indices into scheduled of the sequences that may get a draft
        # Decodes first (one token each keeps inter-token latency low), then prompt chunks; oldest first.
        for seq in sorted(self.running, key=lambda s: (s.remaining > 1, s.arrival)):
            if seq.status is not Status.RUNNING or budget == 0:
                continue
            n = min(seq.remaining, budget)
            while not self._grow(seq, seq.num_computed + n):
                victims = [s for s in self.running if s is not seq and s not in (x for x, _ in scheduled)]
                if not victims:
                    break
                self._preempt(max(victims, key=lambda s: s.arrival))
            else:
                if seq.remaining == 1 and seq.num_computed:
                    decoding.append(len(scheduled))
                scheduled.append((seq, n))
                budget -= n
                continue
            if len(self.running) > 1:
                self._preempt(seq)  # the older sequences scheduled this step hold the blocks: wait for them
            else:
                starved.append(seq)  # alone and still no room
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not seq.block_table and seq.prompt_logprobs is None:
                # Keep at least one token to compute: its logits give the next token.
                cached = self.blocks.match_prefix(seq.cache_keys(len(seq.tokens) - 1))
                seq.block_table, seq.num_computed = cached, len(cached) * self.blocks.block_size
                seq.registered_blocks = len(cached)
            n = min(seq.remaining, budget)
            if not self._grow(seq, seq.num_computed + n):
                self.blocks.release(seq.block_table)  # hold nothing while waiting
                seq.block_table, seq.num_computed, seq.registered_blocks = [], 0, 0
                if not self.running and not scheduled:
                    starved.append(self.waiting.popleft())
                    continue
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            scheduled.append((seq, n))
            budget -= n
        if self.proposer is not None and decoding and budget > 0:
            self._draft(scheduled, decoding, budget)
        return scheduled, starved

    def _draft(self, scheduled: list[tuple[Sequence, int]], decoding: list[int], spare: int) -> None:
        """Give the decoding sequences ``scheduled[i]`` (``i`` in ``decoding``) drafts within ``spare`` tokens and the
        free blocks, oldest first; none while more sequences run than the proposer drafts for."""
        if self.proposer.max_running is not None and len(self.running) > self.proposer.max_running:
            return
        requests = []
        for i in decoding:
            seq = scheduled[i][0]
            # The pending token and the kept draft are all generated: stay within max_new_tokens.
            limit = min(self.proposer.k, spare, seq.max_new_tokens - seq.num_generated - 1)
            requests.append((seq, limit))
            spare -= max(limit, 0)
        for i, draft in zip(decoding, self.proposer.propose_all(requests)):
            seq = scheduled[i][0]
            if draft and self._grow(seq, seq.num_computed + 1 + len(draft)):
                seq.draft = draft
                scheduled[i] = (seq, 1 + len(draft))

    def computed(self, seq: Sequence, n: int) -> None:
        """``n`` more tokens of ``seq`` now have keys/values; offer newly full blocks to the prefix cache."""
        seq.num_computed += n
        full = seq.num_computed // self.blocks.block_size
        if full > seq.registered_blocks:
            hashes = block_hashes(seq.cache_keys(full * self.blocks.block_size), self.blocks.block_size)
            for i in range(seq.registered_blocks, full):
                self.blocks.register(seq.block_table[i], hashes[i])
            seq.registered_blocks = full

"""Speculative decoding by prompt lookup: draft tokens copied from the context, verified in one step.

A decoding sequence whose last ``n`` tokens (``n`` from ``max_ngram`` down to
1) occurred earlier in its prompt or output gets a *draft*: the up to ``k``
tokens that followed that earlier occurrence (the most recent one).  The
engine computes the sequence's pending token and the draft in one step, as a
short prefill chunk, so every draft position gets logits; the draft is kept up
to the first token the model would not have chosen itself, plus the model's
own token at that place.  The pending token and the draft are computed as
decode rows, each over its own context, exactly as one-at-a-time decoding
computes them, so greedy decoding yields the tokens it would have produced one
at a time — several per step where the output copies its context (RAG answers
quoting sources, summaries, code edits), one per step otherwise.  (In bf16 even
plain batched decoding is bit-exact only per batch composition, since the
attention reduces over the batch's longest context; drafts add rows to a batch
like any other request does.)  The KV entries of rejected draft tokens sit past the
sequence's computed length and are overwritten later.

Only sequences whose next token is the plain argmax of the logits take part:
greedy, no repetition/presence/frequency penalties, no grammar, no
log-probabilities.  A draft costs a wider step, so a sequence whose drafts
keep failing stops drafting for a while (``backoff``).

Why not a library: vLLM's n-gram proposer lives inside its CUDA engine; this
is the same idea (prompt lookup decoding, Saxena 2023) on puyu's paged engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from puyu.engine.sequence import Sequence


@dataclass
class PromptLookup:
    """The proposer; ``k`` draft tokens at most, from n-gram matches of ``max_ngram`` down to ``min_ngram`` tokens."""

    k: int = 4
    max_ngram: int = 3
    min_ngram: int = 1
    backoff: int = 8  # steps without drafting after a draft of which nothing was accepted

    def eligible(self, seq: Sequence) -> bool:
        state = seq.output.state
        return state.params.greedy and state.counts is None and state.matcher is None and seq.logprobs is None

    def propose(self, seq: Sequence, limit: int) -> list[int]:
        """Draft tokens for ``seq`` (at most ``limit``), or ``[]``."""
        if seq.draft_pause > 0:
            seq.draft_pause -= 1
            return []
        limit = min(limit, self.k)
        if limit <= 0 or not self.eligible(seq):
            return []
        return find_continuation(seq.tokens, self.max_ngram, self.min_ngram, limit)

    def verified(self, seq: Sequence, draft: list[int], choices: list[int]) -> list[int]:
        """The tokens to keep: ``choices[i]`` is the model's token after the pending token and ``draft[:i]``."""
        accepted = 0
        while accepted < len(draft) and draft[accepted] == choices[accepted]:
            accepted += 1
        if draft and not accepted:
            seq.draft_pause = self.backoff
        return draft[:accepted] + [choices[accepted]]


def find_continuation(tokens: list[int], max_ngram: int, min_ngram: int, limit: int) -> list[int]:
    """What followed the most recent earlier occurrence of the longest matching suffix of ``tokens``."""
    length = len(tokens)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = tokens[length - n :]
        first = suffix[0]
        # Scan backwards for the most recent earlier occurrence that is followed by at least one token.
        for start in range(length - n - 1, -1, -1):
            if tokens[start] == first and tokens[start : start + n] == suffix:
                return tokens[start + n : start + n + limit]
    return []

"""Speculative decoding: draft tokens proposed cheaply, verified by the model in one step.

A *proposer* gives a decoding sequence a draft of up to ``k`` tokens: here
:class:`PromptLookup` (tokens copied from the context), and
:class:`~puyu.engine.draft_model.DraftModel` (a smaller model, or a cheaper copy
of the same one, decodes them).  The engine computes the sequence's pending
token and the draft in one step, so every draft position gets logits; the draft
is kept up to the first token the model would not have chosen itself, plus the
model's own token at that place (:meth:`Proposer.verified`).  The pending token
and the draft are computed as decode rows, each over its own context, exactly
as one-at-a-time decoding computes them, so greedy decoding yields the tokens it
would have produced one at a time: several per step when the draft is right,
one otherwise.  (In bf16 even plain batched decoding is bit-exact only per batch
composition, since the attention reduces over the batch's longest context;
drafts add rows to a batch like any other request does.)  The KV entries of
rejected draft tokens sit past the sequence's computed length and are
overwritten later.

Only sequences whose next token is the plain argmax of the logits take part:
greedy, no repetition/presence/frequency penalties, no grammar, no
log-probabilities.  A draft costs a wider step, so with prompt lookup a
sequence whose drafts keep failing stops drafting for a while (``backoff``).

Prompt lookup (n-gram) drafting: a sequence whose last ``n`` tokens (``n`` from
``max_ngram`` down to 1) occurred earlier in its prompt or output gets the up to
``k`` tokens that followed that earlier occurrence (the most recent one):
several tokens per step where the output copies its context (RAG answers quoting
sources, summaries, code edits).  Why not a library: vLLM's n-gram proposer
lives inside its CUDA engine; this is the same idea (prompt lookup decoding,
Saxena 2023) on puyu's paged engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from puyu.engine.sequence import Sequence


class Proposer:
    """What the scheduler asks for drafts and the runner for what to keep; subclasses implement :meth:`propose_all`."""

    k: int = 4  # most draft tokens per sequence and step
    backoff: int = 0  # steps without drafting after a draft of which nothing was accepted
    max_running: int | None = None  # no drafts while more sequences than this run (None: always)

    def eligible(self, seq: Sequence) -> bool:
        state = seq.output.state
        return state.params.greedy and state.counts is None and state.matcher is None and seq.logprobs is None

    def propose_all(self, requests: list[tuple[Sequence, int]]) -> list[list[int]]:
        """Draft tokens for each ``(sequence, at most this many)``, in order (``[]``: no draft)."""
        raise NotImplementedError

    def verified(self, seq: Sequence, draft: list[int], choices: list[int]) -> list[int]:
        """The tokens to keep: ``choices[i]`` is the model's token after the pending token and ``draft[:i]``."""
        accepted = 0
        while accepted < len(draft) and draft[accepted] == choices[accepted]:
            accepted += 1
        if draft and not accepted:
            seq.draft_pause = self.backoff
        return draft[:accepted] + [choices[accepted]]

    def forget(self, seq: Sequence) -> None:
        """``seq`` finished or was aborted: drop what the proposer keeps for it."""

    def _paused(self, seq: Sequence) -> bool:
        if seq.draft_pause > 0:
            seq.draft_pause -= 1
            return True
        return False


@dataclass
class PromptLookup(Proposer):
    """The n-gram proposer; ``k`` draft tokens at most, from matches of ``max_ngram`` down to ``min_ngram`` tokens."""

    k: int = 4
    max_ngram: int = 3
    min_ngram: int = 1
    backoff: int = 8
    max_running: int | None = None

    def propose_all(self, requests: list[tuple[Sequence, int]]) -> list[list[int]]:
        drafts = []
        for seq, limit in requests:
            limit = min(limit, self.k)
            if self._paused(seq) or limit <= 0 or not self.eligible(seq):
                drafts.append([])
            else:
                drafts.append(find_continuation(seq.tokens, self.max_ngram, self.min_ngram, limit))
        return drafts


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

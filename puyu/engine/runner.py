"""One engine step on the model: flatten the scheduled tokens, run the model, sample.

All scheduled tokens of all sequences form one row ``[1, N]`` (so the linear
layers see one matrix), with each token's position and KV slot; a
:class:`~puyu.engine.paged_cache.PagedBatch` routes attention.  The LM head runs
only where logits are needed: the last token of every sequence that samples
this step, and every prompt position of requests that asked for prompt
log-probabilities.

With ``compile``, steps run through ``torch.compile(model, dynamic=True)``: eager
PyTorch spends most of a CPU decode step dispatching some 25 small ops per layer,
which Inductor fuses.  On a ``direct`` cache (float32 on a CPU where puyu's kernels
run: :class:`~puyu.engine.paged_cache.RowBatch`) every step is tensors only and
compiled: decodes, prompt chunks, mixed steps, draft verification and prompt
log-probabilities; two graphs cover them (one row; several, padded to at least two
sequences, context slots and logits rows so that Dynamo never specializes a size
of 1 into a third graph compiled in the middle of serving).  Elsewhere only steps
that only decode are compiled (two graphs: one sequence, or several through SDPA
always with a padding mask), and prompt chunks and steps that verify speculative
drafts (:mod:`puyu.engine.speculative`) stay eager.  A drafted sequence's pending
token and draft tokens each attend alone over exactly their own context, as
one-at-a-time decoding computes them, and the draft is kept up to the first token
the model would not have chosen.  Image prompts prefill (eagerly) the vectors of
their image tokens in place of the placeholders' embeddings.  Compiled without
"duck sizing", which would otherwise tie the batch size to any model dimension of
the same value seen while compiling (two KV heads and two sequences) and
recompile later.  Dynamo checks
only its guards on a step's inputs, not the ~4300 on the model, which does not
change while the engine runs (see :func:`_compiled_forward`): the whole set cost
1.0-1.5 ms of every step of the built-in model, 0.2 ms are left.  Floats (norm
epsilons, RoPE scaling) are constants of the graph: as graph inputs they cost a
tensor and a guard each per step.  (The cache tensors' shapes stay dynamic: the cache is sized from free
memory, so a static size would miss the compile cache at the next start.)
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import torch
import torch._dynamo.config as dynamo_config
import torch.fx.experimental._config as shape_config

from puyu.engine.paged_cache import PagedBatch, PagedKVCache, PrefillChunk, RowBatch
from puyu.engine.sequence import Sequence
from puyu.engine.speculative import Proposer
from puyu.generation.output import TokenLogprob
from puyu.generation.sampling import sample_next
from puyu.model.transformer import Transformer


@dataclass
class StepResult:
    seq: Sequence
    computed: int  # tokens whose keys/values this step stored for good (a rejected draft's are not)
    tokens: list[int] = field(default_factory=list)  # new tokens, in order; none while a prompt is still being prefilled
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token when the request asked for them
    draft: int = 0  # draft tokens this step verified


def _logprob(logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    alternatives = []
    if top:
        values, ids = logprobs.topk(top)
        alternatives = list(zip(ids.tolist(), values.tolist()))
    return TokenLogprob(token, float(logprobs[token]), alternatives)


def inductor_options(device: torch.device) -> dict[str, bool]:
    """Inductor settings of the compiled decode step (part of the compile cache's key).

    Without Inductor's size/stride/alignment asserts: about 580 checks a decode step of the built-in model that
    Dynamo's guards already make (the inputs' shapes) or that hold by construction (the outputs of its own ops).
    On the CPU the graph's wrapper is C++ (``cpp_wrapper``): the Python wrapper spent 4-5 ms of every step of the
    built-in model calling its ~400 kernels and allocating their outputs, about a third of a single-stream step on 2
    AVX2 cores (measured: 75 -> 95 tok/s single stream, 192 -> 271 tok/s at 8 streams, w4a16).  Every op the graph
    calls outside Inductor is C++ too (puyu's kernels are registered in C++, :mod:`puyu.kernels`).  The first compile
    takes longer (the wrapper is one more C++ file to build), later starts load it from the compile cache.
    """
    return {"size_asserts": False, "alignment_asserts": False, "scalar_asserts": False, "cpp_wrapper": device.type == "cpu"}


def _forward(model: Transformer, *args, **kwargs):
    """The compiled decode step: the model as an argument, so that its guards can be told from the inputs'."""
    return model(*args, **kwargs)


def _compiled_forward(device: torch.device):
    """``_forward`` compiled for one engine, without Dynamo's guards on the model.

    Those are ~4300 checks a step (its modules' types and hooks, config constants, ~370 weights); kept are the guards
    on a step's inputs (tokens, positions, the paged batch and their shapes).  The model does not change while an
    engine runs it (adapters are merged or attached at load, before the compile).  Dynamo keeps compiled code per code
    object, shared by every caller of it, so each engine compiles its own copy of ``_forward``'s code: without the
    model's guards another engine's model would otherwise run this one's graphs.
    """
    code = _forward.__code__.replace()  # a new code object: a cache of compiled graphs of its own
    forward = types.FunctionType(code, _forward.__globals__, "decode_step")

    def input_guards(entries: list) -> list[bool]:
        return [not (entry.name.startswith("model") or entry.is_global) for entry in entries]

    return torch.compile(forward, dynamic=True, options={**inductor_options(device), "guard_filter_fn": input_guards})


class ModelRunner:
    def __init__(self, model: Transformer, cache: PagedKVCache, compile: bool = False, proposer: Proposer | None = None):
        self.model, self.cache, self.proposer = model, cache, proposer
        self.device = model.device
        self.compiled = _compiled_forward(self.device) if compile else None

    def _slots(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        bs = self.cache.block_size
        pos = torch.arange(start, end)
        return torch.tensor(seq.block_table)[pos // bs] * bs + pos % bs

    @torch.inference_mode()
    def run(self, scheduled: list[tuple[Sequence, int]]) -> list[StepResult]:
        """Run one step; ``n`` of each ``(sequence, n)`` counts its pending tokens plus its draft."""
        tokens, positions = [], []
        sample_at, drafted, prompt_rows, image_chunks = [], [], [], []
        width = 0
        # Decodes first: the SDPA path then slices them off the row instead of indexing.  A drafted sequence's
        # tokens follow, each attended alone over its own context: computed exactly as one-at-a-time decoding.
        scheduled = sorted(scheduled, key=lambda item: 0 if item[1] == 1 and item[0].num_computed else 1 if item[0].draft else 2)
        for seq, n in scheduled:
            start, past = width, seq.num_computed
            if seq.images is not None and past < len(seq.prompt):
                image_chunks.append((seq.images, past, past + n, start))
            tokens += seq.step_tokens(n)
            positions.append(torch.arange(past, past + n))
            if seq.prompt_logprobs is not None and past < len(seq.prompt) - 1:
                last = min(past + n, len(seq.prompt) - 1)
                prompt_rows.append((seq, past, list(range(start, start + last - past))))
            if seq.draft:
                drafted.append((seq, list(range(start + n - 1 - len(seq.draft), start + n))))
            elif past + n == len(seq.tokens):
                sample_at.append((seq, start + n - 1))
            width += n

        draft_rows = [i for _, idx in drafted for i in idx]
        rows = [i for _, i in sample_at] + draft_rows + [i for _, _, idx in prompt_rows for i in idx]
        if self.cache.direct:
            batch = self._row_batch(scheduled)
            # unused logits rows (the last one again), up to two (one): see _row_batch
            rows += [rows[-1] if rows else width - 1] * ((2 if width > 1 else 1) - len(rows))
        else:
            batch = self._paged_batch(scheduled)
        step = torch.tensor([tokens], device=self.device)
        pos = torch.cat(positions)[None].to(self.device)
        keep = torch.tensor(rows, dtype=torch.long, device=self.device)
        if image_chunks:
            embeds = self.model.model.embed_tokens(step)
            for images, begin, end, offset in image_chunks:
                images.scatter(embeds[0], begin, end, offset)
            logits = self.model(None, pos, cache=batch, logits_to_keep=keep, inputs_embeds=embeds)[0].float()
        elif self.compiled is not None and (self.cache.direct or not (batch.prefills or batch.single_rows or prompt_rows)):
            with shape_config.patch(use_duck_shape=False), dynamo_config.patch(specialize_float=True):
                logits = self.compiled(self.model, step, pos, cache=batch, logits_to_keep=keep)[0].float()
        else:
            logits = self.model(step, pos, cache=batch, logits_to_keep=keep)[0].float()

        results: dict[int, StepResult] = {id(seq): StepResult(seq, n) for seq, n in scheduled}
        sampled = sample_next(logits[: len(sample_at)], [s.output.state for s, _ in sample_at]) if sample_at else []
        for row, ((seq, _), token) in enumerate(zip(sample_at, sampled)):
            logprob = [_logprob(logits[row].log_softmax(-1), token, seq.logprobs)] if seq.logprobs is not None else []
            results[id(seq)].tokens, results[id(seq)].logprobs = [token], logprob
        row = len(sample_at)
        if drafted:
            choices = logits[row : row + len(draft_rows)].argmax(-1).tolist()
            for seq, idx in drafted:
                kept = self.proposer.verified(seq, seq.draft, choices[:len(idx)])
                choices = choices[len(idx):]
                result = results[id(seq)]
                result.tokens, result.draft = kept, len(seq.draft)
                result.computed -= len(seq.draft) - (len(kept) - 1)
                seq.draft = []
            row += len(draft_rows)
        for seq, past, idx in prompt_rows:
            if past == 0:
                seq.collected_prompt_logprobs = [None]
            logprobs = logits[row : row + len(idx)].log_softmax(-1)
            for j in range(len(idx)):
                seq.collected_prompt_logprobs.append(_logprob(logprobs[j], seq.prompt[past + j + 1], seq.prompt_logprobs))
            row += len(idx)
        return list(results.values())

    def _row_batch(self, scheduled: list[tuple[Sequence, int]]) -> RowBatch:
        """Every row over its own context, one row of context slots per sequence (a ``direct`` cache).

        Steps of more than one token always have at least two context rows of at least two slots (and the caller keeps
        at least two logits rows): the compiled step then has one graph for all of them, where Dynamo would otherwise
        specialize a size of 1 into a graph of its own, compiled in the middle of serving the first time it occurs.
        """
        contexts, lengths, rows, new = [], [], [], []
        for seq, n in scheduled:
            past = seq.num_computed
            rows += [len(contexts)] * n
            lengths.append(torch.arange(past + 1, past + n + 1))
            contexts.append(self._slots(seq, 0, past + n))
            new.append(contexts[-1][past:])  # where this step's tokens go
        several = len(rows) > 1
        longest = max(2 if several else 1, max(len(c) for c in contexts))
        padded = torch.zeros(max(2 if several else 1, len(contexts)), longest, dtype=torch.long)
        for i, c in enumerate(contexts):
            padded[i, : len(c)] = c
        return RowBatch(self.cache, torch.cat(new).to(self.device), padded.to(self.device), torch.cat(lengths).to(self.device),
                        torch.tensor(rows, device=self.device))

    def _paged_batch(self, scheduled: list[tuple[Sequence, int]]) -> PagedBatch:
        """Decode rows over gathered copies of their contexts, prompt chunks and draft rows through SDPA."""
        slots, decode_slots, prefills, single_rows = [], [], [], []
        start = 0
        for seq, n in scheduled:
            past = seq.num_computed
            slots.append(self._slots(seq, past, past + n))
            if n == 1 and past > 0:
                decode_slots.append(self._slots(seq, 0, past + 1))
            elif seq.draft:
                single_rows += [(start + j, self._slots(seq, 0, past + j + 1).to(self.device)) for j in range(n)]
            else:
                context = self._slots(seq, 0, past + n).to(self.device) if past else None
                prefills.append(PrefillChunk(start, start + n, past, context))
            start += n
        slot_mapping = torch.cat(slots).to(self.device)
        return PagedBatch(self.cache, slot_mapping, len(decode_slots), *self._decode_context(decode_slots), prefills, single_rows)

    def _decode_context(self, decode_slots: list[torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(slots [Bd, Lmax] padded with 0, mask or None)`` of the decode rows (both None without any); the mask only
        for several rows."""
        if not decode_slots:
            return None, None
        lengths = torch.tensor([len(s) for s in decode_slots])
        longest = int(lengths.max())
        padded = torch.zeros(len(decode_slots), longest, dtype=torch.long)
        for i, s in enumerate(decode_slots):
            padded[i, : len(s)] = s
        mask = None
        if len(decode_slots) > 1:
            mask = (torch.arange(longest)[None] < lengths[:, None])[:, None, None].to(self.device)
        return padded.to(self.device), mask

"""Batched generation on the model core, streamed token by token.

:func:`stream` runs a batch of tokenized prompts (left-padded, one static KV
cache) and yields a :class:`Delta` whenever a sequence has new final text or
finishes; :func:`generate` collects them into :class:`Completion` objects.
A prompt with images (:class:`~puyu.model.vlm.prompt.PromptImages`) prefills their vectors in place of its
placeholder tokens.  A prefix that every prompt of a text batch shares (a system prompt, tool schemas, few-shot
examples: :func:`shared_prefix`) is prefilled once and copied into each row; the rows' own tokens follow it,
left-padded, so the padding sits between the prefix and them (masked like any padding, positions continuing
from the prefix).  Stopping: the template's stop tokens (plus ``stop_token_ids``), stop strings
(cut from the text; text that might start a stop string is held back while
streaming), ``max_new_tokens``, and the context window.

This is the single-batch path used by ``puyu chat`` and the Python API; the
serving engine adds continuous batching and a paged cache on top of the same
sampling code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch

from puyu.errors import ContextLengthError
from puyu.generation.output import Completion, Delta, SequenceOutput
from puyu.generation.sampling import SamplingParams, sample_next
from puyu.model.transformer import Transformer
from puyu.tokenizer import Tokenizer

if TYPE_CHECKING:
    from puyu.model.vlm.prompt import PromptImages

SHARED_PREFIX_MIN = 32  # shorter shared prefixes are not worth a separate forward


@torch.inference_mode()
def stream(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    params: SamplingParams | list[SamplingParams] | None = None,
    images: list[PromptImages | None] | None = None,
) -> Iterator[Delta]:
    """Generate for each tokenized prompt (``images[i]``: the images of prompt ``i``); yields :class:`Delta` events
    (see the module docstring).

    Raises:
        ContextLengthError: a prompt leaves no room in the context window.
    """
    params = params or SamplingParams()
    plist = params if isinstance(params, list) else [params] * len(prompts)
    context = model.config.max_position_embeddings
    longest = max(len(p) for p in prompts)
    for i, p in enumerate(prompts):
        if not p:
            raise ContextLengthError(f"prompt {i} is empty; give at least one token")
        if len(p) >= context:
            raise ContextLengthError(f"prompt {i} has {len(p)} tokens but the context window is {context}; shorten it")
    max_new = min(max(p.max_new_tokens for p in plist), context - longest)
    stop_ids = set(tokenizer.stop_token_ids)
    seqs = [SequenceOutput(i, p, plist[i], tokenizer, model.config.vocab_size, model.device, stop_ids) for i, p in enumerate(prompts)]
    budgets = [min(plist[i].max_new_tokens, context - len(p)) for i, p in enumerate(prompts)]

    device = model.device
    shared = shared_prefix(prompts) if not (images and any(images)) else 0
    width = longest - shared if shared else longest
    tokens = torch.zeros(len(prompts), width, dtype=torch.long)
    real = torch.zeros(len(prompts), width, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p) + shared :] = torch.tensor(p[shared:])
        real[i, width - len(p) + shared :] = True
    tokens, real = tokens.to(device), real.to(device)
    cache = model.new_cache(len(prompts), shared + width + max_new)
    if shared:
        prefix = model.new_cache(1, shared)
        model(torch.tensor([prompts[0][:shared]], device=device), cache=prefix, logits_to_keep=1, output="hidden")
        cache.fill_prefix(prefix)
        del prefix
    if not bool(real.all()):
        cache.set_padding(real)
    positions = (real.long().cumsum(1) - 1).clamp(min=0) + shared
    if images and any(images):
        embeds = model.model.embed_tokens(tokens)
        for i, (p, prompt_images) in enumerate(zip(prompts, images)):
            if prompt_images is not None:
                prompt_images.scatter(embeds[i], 0, len(p), longest - len(p))
        logits = model(None, positions, cache=cache, logits_to_keep=1, inputs_embeds=embeds)[:, -1]
    else:
        logits = model(tokens, positions, cache=cache, logits_to_keep=1)[:, -1]
    next_pos = positions[:, -1:] + 1
    for step in range(max_new):
        chosen = sample_next(logits, [s.state for s in seqs])
        for seq, token, budget in zip(seqs, chosen, budgets):
            if seq.finish is None:
                yield seq.add(token, step + 1 < budget)
        if all(s.finish for s in seqs):
            return
        if cache.key_padding is not None:
            cache.set_padding(torch.ones(len(prompts), 1, dtype=torch.bool, device=device))
        logits = model(torch.tensor(chosen, device=device)[:, None], next_pos, cache=cache)[:, -1]
        next_pos = next_pos + 1


def shared_prefix(prompts: list[list[int]]) -> int:
    """Leading tokens every prompt of a batch shares, when there are at least :data:`SHARED_PREFIX_MIN` of them (else
    0), leaving each prompt at least one token of its own."""
    if len(prompts) < 2:
        return 0
    first, shortest = prompts[0], min(len(p) for p in prompts)
    n = 0
    while n < shortest - 1 and all(p[n] == first[n] for p in prompts):
        n += 1
    return n if n >= SHARED_PREFIX_MIN else 0


def generate(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    params: SamplingParams | list[SamplingParams] | None = None,
    images: list[PromptImages | None] | None = None,
) -> list[Completion]:
    """Run :func:`stream` to the end; one :class:`Completion` per prompt, in order."""
    results = [Completion(prompt_tokens=len(p)) for p in prompts]
    for delta in stream(model, tokenizer, prompts, params, images):
        results[delta.index].add_delta(delta)
    return results

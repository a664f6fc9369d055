"""Batched generation: batch invariance, stop tokens, stop strings with streaming hold-back,
lengths and the context window."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from puyu.errors import ContextLengthError
from puyu.generation import SamplingParams, generate, stream

GREEDY = dict(temperature=0, ignore_eos=True)


def test_greedy_batch_equals_each_prompt_alone(tiny_llm):
    prompts = [tiny_llm.tokenizer.encode(t) for t in ["Hello", "The quick brown fox jumps", "你好，世界"]]
    params = SamplingParams(max_new_tokens=12, **GREEDY)
    together = generate(tiny_llm.model, tiny_llm.tokenizer, prompts, params)
    for prompt, result in zip(prompts, together):
        alone = generate(tiny_llm.model, tiny_llm.tokenizer, [prompt], params)[0]
        assert result.token_ids == alone.token_ids and result.text == alone.text
        assert result.finish_reason == "length" and result.completion_tokens == 12


def test_a_shared_prefix_is_prefilled_once_and_changes_no_token(tiny_llm, monkeypatch):
    from puyu.generation import generator

    system = tiny_llm.tokenizer.encode("You are a careful assistant. Tools: " + "calculator(expression: string); " * 6)
    prompts = [system + tiny_llm.tokenizer.encode(t, add_special_tokens=False) for t in [" Hello", " The quick brown fox", " 你好"]]
    assert generator.shared_prefix(prompts) >= generator.SHARED_PREFIX_MIN
    assert generator.shared_prefix([system, system]) == len(system) - 1  # each row keeps a token of its own
    calls = []
    forward = type(tiny_llm.model).forward
    monkeypatch.setattr(type(tiny_llm.model), "forward", lambda self, tokens=None, *a, **k: calls.append(
        None if tokens is None else tuple(tokens.shape)) or forward(self, tokens, *a, **k))
    params = SamplingParams(max_new_tokens=10, **GREEDY)
    together = generate(tiny_llm.model, tiny_llm.tokenizer, prompts, params)
    assert calls[0] == (1, generator.shared_prefix(prompts))  # the prefix, once, for the whole batch
    for prompt, result in zip(prompts, together):
        alone = generate(tiny_llm.model, tiny_llm.tokenizer, [prompt], params)[0]
        assert result.token_ids == alone.token_ids


def test_stop_token_ends_the_reply_without_its_text(tiny_llm):
    prompt = [tiny_llm.tokenizer.encode("Hello world")]
    free = generate(tiny_llm.model, tiny_llm.tokenizer, prompt, SamplingParams(max_new_tokens=10, **GREEDY))[0].token_ids
    cut = next(i for i, t in enumerate(free) if t not in free[:i] and i > 0)
    stopped = generate(tiny_llm.model, tiny_llm.tokenizer, prompt,
                       SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=[free[cut]]))[0]
    assert stopped.token_ids == free[:cut] and stopped.finish_reason == "stop"


class ScriptedModel:
    """Stands in for a Transformer: its logits always pick the next token of a script."""

    def __init__(self, script: list[int], vocab_size: int, context: int = 1024):
        self.script, self.step = script, 0
        self.config = SimpleNamespace(vocab_size=vocab_size, max_position_embeddings=context)
        self.device = torch.device("cpu")

    def new_cache(self, batch: int, length: int):
        return SimpleNamespace(key_padding=None, set_padding=lambda real: None)

    def __call__(self, tokens, positions=None, cache=None, logits_to_keep=0):
        logits = torch.full((tokens.shape[0], 1, self.config.vocab_size), -1e9)
        logits[:, :, self.script[min(self.step, len(self.script) - 1)]] = 0
        self.step += 1
        return logits


def scripted_deltas(tokenizer, text: str, stop: list[str]):
    ids = tokenizer.encode(text, add_special_tokens=False)
    model = ScriptedModel(ids, tokenizer.vocab_size)
    return list(stream(model, tokenizer, [[0]], SamplingParams(max_new_tokens=len(ids), temperature=0, stop=stop, ignore_eos=True)))


def test_stop_string_is_cut_and_never_streamed(tiny_tokenizer):
    deltas = scripted_deltas(tiny_tokenizer, "Hello world! STOP and more text", ["STOP", "never"])
    assert "".join(d.text for d in deltas) == "Hello world! "
    assert deltas[-1].finish_reason == "stop"
    assert not any("S" in d.text for d in deltas)  # the start of the stop string was held back


def test_text_that_only_looks_like_a_stop_string_is_released(tiny_tokenizer):
    deltas = scripted_deltas(tiny_tokenizer, "Hello STAR world", ["STOP"])
    assert "".join(d.text for d in deltas) == "Hello STAR world"
    assert deltas[-1].finish_reason == "length"


def test_prompt_longer_than_the_context_is_refused_with_the_lengths(tiny_llm):
    context = tiny_llm.context_length
    with pytest.raises(ContextLengthError, match=f"{context + 5} tokens.*{context}"):
        generate(tiny_llm.model, tiny_llm.tokenizer, [[5] * (context + 5)])


def test_max_new_tokens_is_capped_by_the_context(tiny_llm):
    context = tiny_llm.context_length
    out = generate(tiny_llm.model, tiny_llm.tokenizer, [[5] * (context - 3)], SamplingParams(max_new_tokens=50, **GREEDY))[0]
    assert out.completion_tokens == 3 and out.finish_reason == "length"


def test_seeded_sampling_is_reproducible(tiny_llm):
    def run(seed):
        return tiny_llm.generate(["Hello"], temperature=1.0, top_p=1.0, seed=seed, max_new_tokens=16, ignore_eos=True)

    assert run(3) == run(3) and run(3) != run(4)

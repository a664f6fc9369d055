"""The loop guard: loops found in text, incrementally while tokens arrive, and as a sampling option of real generation."""

from __future__ import annotations

import pytest
import torch

from puyu.errors import ConfigError
from puyu.generation import SamplingParams, generate
from puyu.generation.loop_guard import LoopGuard, find_loop, trim_loop
from puyu.generation.output import SequenceOutput

LOOP = "The source of the server is [1]. The server is [5]. The server is [6]. The server is [7]. The server is [8]."
NORMAL = ("Start the server with `lmdeploy serve api_server MODEL` [1]. It listens on port 23333 by default [2]; "
          "pass --server-port to change the port [2].")


def test_a_repeated_run_with_changing_citation_numbers_is_a_loop():
    assert find_loop(LOOP, 6) == LOOP.index("The server is [6]")  # the third "the server is [<n>]"
    assert trim_loop(LOOP, 6) == "The source of the server is [1]."  # one copy, cut at a sentence end
    assert find_loop(NORMAL, 6) is None and trim_loop(NORMAL, 6) == NORMAL
    assert find_loop("好的。我知道了。好的。我知道了。好的。我知道了。", 4) is not None  # Chinese characters are units of their own


def test_the_incremental_guard_agrees_with_find_loop_on_every_prefix():
    for text in (LOOP, NORMAL, "and and and and and and and and and and and"):
        guard, fired = LoopGuard(6), None
        for end in range(1, len(text) + 1):
            if guard.looping(text[:end]):
                fired = end
                break
        expected = find_loop(text, 6)
        assert (fired is None) == (expected is None)
        if fired is not None:  # it fires once the looping run is complete
            assert find_loop(text[:fired], 6) == expected


def feed(tokenizer, text: str, **params) -> SequenceOutput:
    """Push ``text``'s tokens one by one through a sequence's output, as a scripted generator would, until it finishes."""
    output = SequenceOutput(0, [1], SamplingParams(**params), tokenizer, 400, torch.device("cpu"), set())
    pieces = []
    for token in tokenizer.encode(text):
        pieces.append(output.add(token, budget_left=True).text)
        if output.finish:
            break
    output.pieces = pieces
    return output


def test_a_scripted_degenerate_reply_is_stopped_and_a_normal_one_is_unchanged(tiny_tokenizer):
    looping = feed(tiny_tokenizer, LOOP, loop_guard=6)
    assert looping.finish == "stop" and "".join(looping.pieces) == looping.text
    assert looping.text.startswith("The source of the server is [1]. The server is [5]. The server is [6].")
    assert "[7]" not in looping.text
    unguarded = feed(tiny_tokenizer, LOOP)
    assert unguarded.finish is None and unguarded.text == LOOP
    normal = feed(tiny_tokenizer, NORMAL, loop_guard=6)
    assert normal.finish is None and normal.text == NORMAL


def test_generation_with_the_guard_ends_where_the_unguarded_reply_starts_looping(tiny_llm):
    """A tiny random model under greedy decoding repeats itself; with the guard the reply is the unguarded one, cut short."""
    prompt = [tiny_llm.tokenizer.encode("The quick brown fox")]
    free = generate(tiny_llm.model, tiny_llm.tokenizer, prompt, SamplingParams(temperature=0, max_new_tokens=120, ignore_eos=True))[0]
    assert find_loop(free.text, 4) is not None  # the premise: this reply loops
    guarded = generate(tiny_llm.model, tiny_llm.tokenizer, prompt,
                       SamplingParams(temperature=0, max_new_tokens=120, ignore_eos=True, loop_guard=4))[0]
    assert guarded.finish_reason == "stop" and len(guarded.token_ids) < len(free.token_ids)
    assert free.text.startswith(guarded.text) and find_loop(guarded.text, 4) is not None


def test_loop_guard_is_validated():
    with pytest.raises(ConfigError, match="loop_guard"):
        SamplingParams(loop_guard=1)
    with pytest.raises(ConfigError, match="loop_guard must be >= 0"):
        SamplingParams(loop_guard=-3)


def test_the_server_request_carries_the_loop_guard():
    from puyu.serve.protocol import CompletionRequest

    request = CompletionRequest(model="m", prompt="hi", loop_guard=8)
    assert request.sampling(16, 0, {}).loop_guard == 8 and CompletionRequest(model="m", prompt="hi").sampling(16, 0, {}).loop_guard == 0

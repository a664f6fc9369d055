"""Speculative decoding by prompt lookup: identical greedy outputs, drafts really accepted, limits kept,
non-greedy requests untouched, and the acceptance counters."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from puyu.engine import EngineConfig, LLMEngine
from puyu.engine.speculative import find_continuation
from puyu.generation import SamplingParams
from tests.conftest import DATASETS


def test_the_continuation_of_the_most_recent_longest_match_is_proposed():
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    assert find_continuation(tokens, 3, 1, 4) == [7, 8, 5, 1]  # "1 2 3" last seen before 7 8 5 1
    assert find_continuation(tokens, 3, 1, 2) == [7, 8]
    assert find_continuation([4, 5, 6, 5], 3, 1, 3) == [6, 5]  # only the 1-gram "5" matches
    assert find_continuation([1, 2, 3], 3, 1, 3) == []


def _run(model, tokenizer, batch, params, together: bool = True, **config):
    engine = LLMEngine(model, tokenizer, EngineConfig(**{"speculative": "none", **config}))  # plain unless asked
    try:
        results = engine.generate(batch, params) if together else [engine.generate([p], params)[0] for p in batch]
        return results, engine.stats()
    finally:
        engine.shutdown()


def _copying_prompts(tokenizer, count: int) -> list[list[int]]:
    """Real instructions that invite copying: repeat or continue a passage from the Alpaca demo set."""
    rows = json.loads((DATASETS / "sft/llamafactory_demo/alpaca_en_demo.json").read_text())
    prompts = []
    for i, row in enumerate(rows[:count]):
        passage = (row["instruction"] + " " + row["output"])[:400]
        ask = ["Repeat this text exactly:", "Summarize:", "Continue the text:"][i % 3]
        prompts.append(tokenizer.render([{"role": "user", "content": f"{ask}\n{passage}"}], add_generation_prompt=True).ids)
    return prompts


# float32: 50 requests batched together.  bf16 + int4: one request at a time, because in bf16 even plain
# batched decoding is not bit-exact across batch compositions (the attention's reductions run over the
# batch's longest context), so a batch is only as identical as batching itself is.
@pytest.mark.parametrize("dtype, quant, together", [(torch.float32, "none", True), (torch.bfloat16, "w4a16", False)])
def test_greedy_outputs_are_identical_and_drafts_are_accepted_on_a_tiny_model(tiny_llm, dtype, quant, together):
    tok = tiny_llm.tokenizer
    batch = [tok.encode("the quick brown fox jumps over the lazy dog " * (1 + i % 3) + str(i)) for i in range(50)]
    params = SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True)
    model = lambda: copy.deepcopy(tiny_llm.model).to(dtype)  # noqa: E731  (quantization rewrites the model in place)
    plain, _ = _run(model(), tok, batch, params, quant=quant, together=together)
    fast, stats = _run(model(), tok, batch, params, speculative="prompt_lookup", quant=quant, together=together)
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]
    assert [r.text for r in fast] == [r.text for r in plain]
    assert all(len(r.token_ids) == 30 and r.finish_reason == "length" for r in fast)  # max_new_tokens kept exactly
    assert stats["accepted_draft_tokens"] > 0 and stats["draft_tokens"] >= stats["accepted_draft_tokens"]
    assert stats["steps"] < _run(model(), tok, batch, params, quant=quant, together=together)[1]["steps"]


def test_stops_inside_an_accepted_draft_end_the_reply_there(tiny_llm):
    tok = tiny_llm.tokenizer
    batch = [tok.encode("the quick brown fox jumps over the lazy dog " * 2)]
    probe, _ = _run(tiny_llm.model, tok, batch, SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True))
    stop = probe[0].text[len(probe[0].text) // 2 :][:3]
    params = SamplingParams(max_new_tokens=40, temperature=0, stop=[stop])
    plain, _ = _run(tiny_llm.model, tok, batch, params)
    fast, _ = _run(tiny_llm.model, tok, batch, params, speculative="prompt_lookup", num_speculative_tokens=8)
    assert fast[0].text == plain[0].text and fast[0].finish_reason == plain[0].finish_reason == "stop"


def test_sampled_and_penalised_requests_do_not_draft(tiny_llm):
    tok = tiny_llm.tokenizer
    batch = [tok.encode("the quick brown fox jumps over the lazy dog " * 2)] * 4
    params = [SamplingParams(max_new_tokens=20, temperature=0.8, seed=i) for i in range(2)]
    params += [SamplingParams(max_new_tokens=20, temperature=0, repetition_penalty=1.3, ignore_eos=True)] * 2
    plain, _ = _run(tiny_llm.model, tok, batch, params)
    fast, stats = _run(tiny_llm.model, tok, batch, params, speculative="prompt_lookup")
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]
    assert stats["draft_tokens"] == 0


@pytest.mark.builtin
def test_builtin_model_gives_identical_greedy_outputs_on_50_real_prompts(builtin_llm):
    batch = _copying_prompts(builtin_llm.tokenizer, 50)
    params = SamplingParams(max_new_tokens=40, temperature=0)
    plain, _ = _run(builtin_llm.model, builtin_llm.tokenizer, batch, params)
    fast, stats = _run(builtin_llm.model, builtin_llm.tokenizer, batch, params, speculative="prompt_lookup")
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]
    print(f"accepted {stats['accepted_draft_tokens']} of {stats['draft_tokens']} draft tokens")
    assert stats["accepted_draft_tokens"] > 0


def test_auto_drafts_by_prompt_lookup_for_a_lone_stream_only_and_only_where_verification_is_exact(tiny_llm):
    """auto: prompt lookup while at most 2 sequences run, on a float32 cache the kernels attend from; none on bf16."""
    tok = tiny_llm.tokenizer
    batch = [tok.encode("the quick brown fox jumps over the lazy dog " * 3 + str(i)) for i in range(6)]
    params = SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True)
    plain, _ = _run(tiny_llm.model, tok, batch[:1], params)
    alone, stats = _run(tiny_llm.model, tok, batch[:1], params, speculative="auto")
    assert alone[0].token_ids == plain[0].token_ids and stats["accepted_draft_tokens"] > 0
    _, crowd = _run(tiny_llm.model, tok, batch, params, speculative="auto")  # 6 running: no drafts
    assert crowd["draft_tokens"] == 0
    engine = LLMEngine(copy.deepcopy(tiny_llm.model).to(torch.bfloat16), tok, EngineConfig())
    assert engine.config.speculative == "auto" and engine.scheduler.proposer is None  # bf16: batching is not bit-exact
    engine.shutdown()

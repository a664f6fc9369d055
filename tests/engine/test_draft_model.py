"""Speculative decoding with a draft model: the served model's greedy outputs token for token, drafts accepted when the
draft agrees, the draft's cache given back, non-greedy requests untouched, clear errors for a draft that cannot serve."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from puyu.engine import EngineConfig, LLMEngine
from puyu.errors import ConfigError
from puyu.generation import SamplingParams
from puyu.model import save_pretrained
from tests.conftest import DATASETS, make_hf_model


def _run(model, tokenizer, batch, params, **config):
    engine = LLMEngine(copy.deepcopy(model), tokenizer, EngineConfig(**{"speculative": "none", **config}))
    try:
        return engine.generate(batch, params), engine
    finally:
        engine.shutdown()


def _prompts(tokenizer, count: int) -> list[list[int]]:
    words = "the quick brown fox jumps over the lazy dog while 你好 世界 def add ( a , b ) : return a + b".split()
    return [tokenizer.encode(" ".join(words[(i * 7) % len(words):] + words[: (i * 7) % len(words)][: i % 5]) + str(i))
            for i in range(count)]


@pytest.fixture
def noisy_draft_dir(tmp_path, tiny_llm):
    """The tiny model with noise on its weights: a draft that agrees with it often, not always."""
    draft = copy.deepcopy(tiny_llm.model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * p.std() * 0.3)
    save_pretrained(draft, tiny_llm.tokenizer, tmp_path / "draft")
    return tmp_path / "draft"


def test_greedy_outputs_of_50_prompts_are_the_served_models_own_with_a_draft_that_is_sometimes_wrong(tiny_llm, noisy_draft_dir):
    tok = tiny_llm.tokenizer
    batch = _prompts(tok, 50)
    params = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)
    plain, _ = _run(tiny_llm.model, tok, batch, params)
    fast, engine = _run(tiny_llm.model, tok, batch, params, draft_model=str(noisy_draft_dir), max_num_seqs=8)
    assert engine.config.speculative == "draft_model"  # implied by a draft model
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]
    assert all(len(r.token_ids) == 24 for r in fast)  # max_new_tokens kept exactly
    stats = engine.stats()
    assert 0 < stats["accepted_draft_tokens"] < stats["draft_tokens"]  # some drafts right, some wrong
    assert engine.scheduler.proposer.blocks.num_free == engine.scheduler.proposer.blocks.num_blocks  # shadows released
    assert not engine.scheduler.proposer.shadows


def test_a_draft_equal_to_the_served_model_is_always_accepted_and_saves_steps(tiny_llm, tiny_model_dir):
    tok = tiny_llm.tokenizer
    batch = _prompts(tok, 6)
    params = SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True)
    plain, engine_plain = _run(tiny_llm.model, tok, batch, params, max_num_seqs=2)
    fast, engine = _run(tiny_llm.model, tok, batch, params, speculative="draft_model", draft_model=str(tiny_model_dir),
                        num_speculative_tokens=5, max_num_seqs=2)
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]
    stats = engine.stats()
    assert stats["draft_tokens"] > 0 and stats["accepted_draft_tokens"] == stats["draft_tokens"]
    assert stats["steps"] < engine_plain.stats()["steps"] / 3


def test_requests_that_sample_or_ask_for_logprobs_are_not_drafted_and_mix_with_drafted_ones(tiny_llm, tiny_model_dir):
    tok = tiny_llm.tokenizer
    batch = _prompts(tok, 4)
    greedy = SamplingParams(max_new_tokens=16, temperature=0, ignore_eos=True)
    sampled = SamplingParams(max_new_tokens=16, temperature=0.8, seed=3, ignore_eos=True)
    params = [greedy, sampled, greedy, sampled]
    plain, _ = _run(tiny_llm.model, tok, batch, params)
    fast, engine = _run(tiny_llm.model, tok, batch, params, draft_model=str(tiny_model_dir))
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]  # seeded sampling is reproducible
    assert engine.stats()["draft_tokens"] > 0


def test_a_draft_model_with_another_vocabulary_or_no_draft_model_is_refused(tiny_llm, tmp_path, tiny_tokenizer_dir):
    with pytest.raises(ConfigError, match="needs a draft_model"):
        EngineConfig(speculative="draft_model")
    with pytest.raises(ConfigError, match="needs speculative=draft_model"):
        EngineConfig(speculative="prompt_lookup", draft_model="x")
    with pytest.raises(ConfigError, match="draft_quant"):
        EngineConfig(draft_model="x", draft_quant="w3")
    other = tmp_path / "other"
    make_hf_model(other, tiny_tokenizer_dir)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]  # the same size, two tokens' ids swapped: the ids mean other text
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="another vocabulary"):
        LLMEngine(copy.deepcopy(tiny_llm.model), tiny_llm.tokenizer, EngineConfig(draft_model=str(other)))


def test_a_quantized_draft_keeps_the_float_models_output(tiny_llm, tiny_model_dir):
    tok = tiny_llm.tokenizer
    batch = _prompts(tok, 8)
    params = SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True)
    plain, _ = _run(tiny_llm.model, tok, batch, params)
    fast, engine = _run(tiny_llm.model, tok, batch, params, draft_model=str(tiny_model_dir), draft_quant="w4a8")
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]
    assert engine.stats()["accepted_draft_tokens"] > 0


def test_compiled_served_and_draft_models_give_the_eager_tokens_with_every_step_compiled_at_start(tiny_llm, noisy_draft_dir):
    from torch._dynamo.utils import counters

    tok = tiny_llm.tokenizer
    batch = _prompts(tok, 6)
    params = SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True)
    config = {"draft_model": str(noisy_draft_dir), "max_num_seqs": 3, "max_num_batched_tokens": 16}  # chunks and arrivals
    eager, _ = _run(tiny_llm.model, tok, batch, params, **config)
    engine = LLMEngine(copy.deepcopy(tiny_llm.model), tok, EngineConfig(compile=True, **config))
    try:
        graphs, calls = counters["stats"]["unique_graphs"], {"served": 0, "draft": 0}
        for name, runner in (("served", engine.runner), ("draft", engine.scheduler.proposer.runner)):
            step = runner.compiled
            runner.compiled = lambda *args, _step=step, _name=name, **kwargs: calls.__setitem__(_name, calls[_name] + 1) or _step(
                *args, **kwargs)
        steps = engine.totals["steps"]
        assert [r.token_ids for r in engine.generate(batch, params)] == [r.token_ids for r in eager]
        assert calls["served"] == engine.totals["steps"] - steps and calls["draft"] > calls["served"]
        assert counters["stats"]["unique_graphs"] == graphs  # both models' graphs were compiled at start
        assert engine.stats()["accepted_draft_tokens"] > 0
    finally:
        engine.shutdown()


@pytest.mark.builtin
def test_the_float_builtin_model_drafted_by_its_own_int4_copy_keeps_its_greedy_outputs_on_50_chat_prompts(builtin_llm):
    tok = builtin_llm.tokenizer
    rows = json.loads((DATASETS / "sft/llamafactory_demo/alpaca_en_demo.json").read_text())[300:350]
    batch = [tok.render([{"role": "user", "content": row["instruction"]}], add_generation_prompt=True).ids for row in rows]
    params = SamplingParams(max_new_tokens=24, temperature=0)
    plain, _ = _run(builtin_llm.model, tok, batch, params)
    fast, engine = _run(builtin_llm.model, tok, batch, params, draft_model="smollm2-135m-instruct", draft_quant="w4a8")
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]
    stats = engine.stats()
    print(f"accepted {stats['accepted_draft_tokens']} of {stats['draft_tokens']} draft tokens")
    assert stats["accepted_draft_tokens"] > stats["draft_tokens"] / 2  # the int4 copy mostly agrees with the float model

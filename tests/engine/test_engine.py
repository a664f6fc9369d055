"""The engine on a tiny model: batch invariance, chunked prefill, preemption, prefix caching,
abort, async streaming, prompt log-probabilities, and clear refusals."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest
import torch

from puyu.engine import EngineConfig, LLMEngine
from puyu.errors import ContextLengthError, QueueFullError
from puyu.generation import SamplingParams, generate

GREEDY = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)


def prompts(tokenizer, count: int) -> list[list[int]]:
    words = "the quick brown fox jumps over a lazy dog while you are fine today 你好 世界".split()
    return [tokenizer.encode(" ".join(words[(i * 3) % 10 : (i * 3) % 10 + 2 + i % 7])) for i in range(count)]


@pytest.fixture
def engine_factory(tiny_llm):
    engines = []

    def make(**config) -> LLMEngine:
        engine = LLMEngine(tiny_llm.model, tiny_llm.tokenizer, EngineConfig(**config))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()


def test_32_concurrent_greedy_requests_equal_each_run_alone(tiny_llm, engine_factory):
    engine = engine_factory()
    batch = prompts(tiny_llm.tokenizer, 32)
    together = engine.generate(batch, GREEDY)
    alone = [engine.generate([p], GREEDY)[0] for p in batch]
    reference = generate(tiny_llm.model, tiny_llm.tokenizer, batch, GREEDY)
    for t, a, r in zip(together, alone, reference):
        assert t.token_ids == a.token_ids == r.token_ids and t.text == r.text
    assert engine.blocks.num_free == engine.blocks.num_blocks


def test_chunked_prefill_and_preemption_keep_outputs_and_free_every_block(tiny_llm, engine_factory):
    batch = [p * 6 for p in prompts(tiny_llm.tokenizer, 8)]  # tens of tokens each, more than the tight cache holds at once
    params = SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)
    reference = engine_factory().generate(batch, params)
    tight = engine_factory(block_size=4, num_blocks=60, max_num_batched_tokens=16, prefix_caching=False)
    results = tight.generate(batch, params)
    assert [r.token_ids for r in results] == [r.token_ids for r in reference]
    assert tight.scheduler.preemptions > 0
    assert tight.blocks.num_free == 60


def test_shared_prefixes_reuse_blocks_without_changing_outputs(tiny_llm, engine_factory):
    system = tiny_llm.tokenizer.encode("You are a helpful assistant. " * 4)
    batch = [system + p for p in prompts(tiny_llm.tokenizer, 6)]
    cached = engine_factory(block_size=4)
    results = [cached.generate([p], GREEDY)[0] for p in batch]  # one after another: later ones hit the cache
    plain = engine_factory(block_size=4, prefix_caching=False).generate(batch, GREEDY)
    assert [r.token_ids for r in results] == [r.token_ids for r in plain]
    assert cached.stats()["prefix_cache_hit_blocks"] >= 5 * (len(system) // 4)


def test_abort_ends_the_request_and_frees_its_blocks(tiny_llm, engine_factory):
    engine = engine_factory()
    events = []
    long = SamplingParams(max_new_tokens=200, temperature=0, ignore_eos=True)
    request_id = engine.submit(prompts(tiny_llm.tokenizer, 1)[0], long, events.append)
    while len(events) < 3:
        pass
    engine.abort(request_id)
    while not (events and events[-1].finished):
        pass
    assert events[-1].finish_reason == "abort" and len(events) < 200
    assert engine.blocks.num_free == engine.blocks.num_blocks


def test_async_stream_and_leaving_early_aborts(tiny_llm, engine_factory):
    engine = engine_factory()
    prompt = prompts(tiny_llm.tokenizer, 1)[0]

    async def run():
        text = "".join([e.delta.text async for e in engine.stream(prompt, GREEDY) if e.delta])
        stream = engine.stream(prompt, SamplingParams(max_new_tokens=200, temperature=0, ignore_eos=True))
        async for event in stream:
            if event.completion_tokens >= 2:
                break
        await stream.aclose()
        await asyncio.sleep(0.3)
        return text

    assert asyncio.run(run()) == engine.generate([prompt], GREEDY)[0].text
    assert engine.blocks.num_free == engine.blocks.num_blocks and not engine._live


def test_prompt_logprobs_equal_the_full_forward(tiny_llm, engine_factory):
    engine = engine_factory(max_num_batched_tokens=8)  # chunked: logprobs are gathered across chunks
    prompt = prompts(tiny_llm.tokenizer, 5)[4] * 3
    events = []
    engine.submit(prompt, SamplingParams(max_new_tokens=0), events.append, prompt_logprobs=2)
    while not (events and events[-1].finished):
        pass
    got = events[-1].prompt_logprobs
    with torch.no_grad():
        reference = tiny_llm.model(torch.tensor([prompt]))[0].float().log_softmax(-1)
    assert got[0] is None and len(got) == len(prompt)
    for i in range(1, len(prompt)):
        assert abs(got[i].logprob - reference[i - 1, prompt[i]].item()) < 1e-4
        assert got[i].top[0][0] == int(reference[i - 1].argmax())


def test_refusals_say_why(tiny_llm, engine_factory):
    engine = engine_factory(max_queue=2, max_num_seqs=1)
    with pytest.raises(ContextLengthError, match="context window is 256"):
        engine.submit([5] * 300, GREEDY, lambda e: None)
    slow = SamplingParams(max_new_tokens=200, temperature=0, ignore_eos=True)
    engine.submit([5, 6], slow, lambda e: None)
    engine.submit([5, 6], slow, lambda e: None)
    with pytest.raises(QueueFullError, match="max_queue=2"):
        engine.submit([5, 6], slow, lambda e: None)


def test_compiled_decode_gives_the_eager_tokens_and_compiles_only_at_start(tiny_llm, engine_factory):
    from torch._dynamo.utils import counters

    batch = prompts(tiny_llm.tokenizer, 8)
    eager = engine_factory().generate(batch, GREEDY)
    compiled = engine_factory(compile=True)
    graphs = counters["stats"]["unique_graphs"]
    together = compiled.generate(batch, GREEDY)
    alone = compiled.generate(batch[:1], GREEDY)
    assert [r.token_ids for r in together] == [r.token_ids for r in eager]
    assert alone[0].token_ids == eager[0].token_ids
    assert counters["stats"]["unique_graphs"] == graphs  # both decode shapes were compiled when the engine started
    assert compiled.totals["requests"] == 9  # the warm-up requests are not counted


def test_every_step_runs_compiled_on_a_direct_cache_with_the_eager_tokens(tiny_llm, engine_factory):
    """On a cache the kernels attend from, prompt chunks, mixed steps, draft verification and prompt log-probabilities
    run the compiled step too, through the graphs compiled at start (one row; several), with the eager tokens."""
    from torch._dynamo.utils import counters

    batch = [tiny_llm.tokenizer.encode("the quick brown fox jumps over the lazy dog " * (1 + i % 3) + str(i)) for i in range(6)]
    config = {"max_num_batched_tokens": 24, "speculative": "prompt_lookup", "max_num_seqs": 4}  # chunks, drafts, arrivals
    eager = engine_factory(**config)
    expected = [r.token_ids for r in eager.generate(batch, GREEDY)]
    scored = eager.generate(batch[:2], GREEDY, prompt_logprobs=1)
    compiled = engine_factory(compile=True, **config)
    assert compiled.cache.direct
    graphs, steps, calls = counters["stats"]["unique_graphs"], compiled.totals["steps"], []
    step = compiled.runner.compiled
    compiled.runner.compiled = lambda *args, **kwargs: calls.append(1) or step(*args, **kwargs)
    assert [r.token_ids for r in compiled.generate(batch, GREEDY)] == expected
    again = compiled.generate(batch[:2], GREEDY, prompt_logprobs=1)
    assert [r.token_ids for r in again] == [r.token_ids for r in scored]
    scores = [[p and (p.token, round(p.logprob, 4)) for p in r.prompt_logprobs] for r in (*again, *scored)]
    assert scores[:2] == scores[2:]
    assert compiled.stats()["accepted_draft_tokens"] > 0
    assert len(calls) == compiled.totals["steps"] - steps  # no step ran eagerly
    assert counters["stats"]["unique_graphs"] == graphs  # and none compiled a graph after the start


def test_compiled_engines_on_two_models_in_one_process_each_decode_their_own_tokens(tiny_llm):
    """Dynamo's guards on the model are not checked (``runner._compiled_forward``), so each engine must run graphs of
    its own: a second model (other weights, fused projections) in the same process must not reuse the first's."""
    other = copy.deepcopy(tiny_llm.model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    other.fuse_projections()
    batch = prompts(tiny_llm.tokenizer, 4)
    tokens = {}
    for name, model in (("first", tiny_llm.model), ("other", other)):
        for compile in (False, True):
            engine = LLMEngine(model, tiny_llm.tokenizer, EngineConfig(compile=compile))
            try:
                tokens[name, compile] = [r.token_ids for r in engine.generate(batch, GREEDY)]
            finally:
                engine.shutdown()
    assert tokens["first", True] == tokens["first", False] and tokens["other", True] == tokens["other", False]
    assert tokens["first", False] != tokens["other", False]


def test_a_second_compiled_engine_loads_from_the_compile_cache_with_the_same_tokens(tiny_llm, engine_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("PUYU_HOME", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    torch._dynamo.reset()  # as in a new process: nothing compiled in memory
    batch = prompts(tiny_llm.tokenizer, 4)
    eager = engine_factory().generate(batch, GREEDY)
    first = engine_factory(compile=True)
    folders = list((tmp_path / "compile").iterdir())
    assert len(folders) == 1 and (folders[0] / "manifest.json").is_file()
    manifest = json.loads((folders[0] / "manifest.json").read_text())
    assert manifest["files"] and manifest["cold_s"] > 0
    written = {path for path in folders[0].rglob("*") if path.is_file()}
    torch._dynamo.reset()
    # Another cache size, as free memory gives at another start: the compiled code must not depend on it (a static cache
    # shape once made every start compile anew)
    second = engine_factory(compile=True, num_blocks=first.cache.num_blocks + 17)
    assert json.loads((folders[0] / "manifest.json").read_text())["cached_s"] > 0  # the second start was a cache hit
    later = {path for path in folders[0].rglob("*") if path.is_file()} - written
    compiled_again = [path for path in later if path.suffix in (".so", ".cpp") or "fxgraph" in path.parts]
    assert not compiled_again, compiled_again
    for engine in (first, second):
        assert [r.token_ids for r in engine.generate(batch, GREEDY)] == [r.token_ids for r in eager]

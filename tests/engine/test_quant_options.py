"""The engine with every ``quant`` (none, w8a16, w4a16, w4a8, w8a8) and ``kv_quant`` (none, int8, int4) option on a tiny model:
the option takes effect, batching never changes a greedy output, speculative drafts stay exact, blocks come back."""

from __future__ import annotations

import copy

import pytest

from puyu.engine import EngineConfig, LLMEngine
from puyu.engine.kv_quant import KV_QUANT
from puyu.errors import ConfigError
from puyu.generation import SamplingParams
from puyu.quant.quantize import INFERENCE_MODES
from puyu.quant.w8a8 import W8A8Linear
from puyu.quant.weight_only import Int4Linear, Int8Linear
from tests.conftest import DATASETS
from tests.engine.test_engine import prompts

CALIB = str(DATASETS / "pretrain/llamafactory_text/c4_demo.jsonl")
GREEDY = SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True)
LAYER = {"w8a16": Int8Linear, "w4a16": Int4Linear, "w4a8": Int4Linear, "w8a8": W8A8Linear}


def make_engine(llm, quant: str = "none", kv_quant: str = "none", **config) -> LLMEngine:
    calib = CALIB if quant == "w8a8" else None
    return LLMEngine(copy.deepcopy(llm.model), llm.tokenizer, EngineConfig(quant=quant, kv_quant=kv_quant, quant_calib=calib, **config))


# Every option at least once, each quantized cache under weight and activation quantization too ((none, none) is what
# tests/engine/test_engine.py runs).
COMBINATIONS = [("none", "int8"), ("none", "int4"), ("w8a16", "int8"), ("w4a16", "int4"), ("w4a8", "none"), ("w8a8", "none"),
                ("w8a8", "int4")]


def test_the_combinations_cover_every_option():
    assert {q for q, _ in COMBINATIONS} == set(INFERENCE_MODES) and {k for _, k in COMBINATIONS} == set(KV_QUANT)


@pytest.mark.parametrize("quant, kv_quant", COMBINATIONS)
def test_every_quant_and_kv_quant_option_answers_batched_requests_as_it_answers_them_alone(tiny_llm, quant, kv_quant):
    # Without prefix caching: a prefix-cache hit reads the quantized prefix where a fresh prompt attends over its own
    # float keys (as LMDeploy does), so only batching, not caching, is output-neutral with a quantized cache.
    engine = make_engine(tiny_llm, quant, kv_quant, prefix_caching=False)
    try:
        qkv = engine.model.model.layers[0].self_attn.qkv_proj
        assert isinstance(qkv, LAYER[quant]) if quant != "none" else qkv is None
        assert engine.cache.keys[0].dtype.is_floating_point == (kv_quant == "none")
        batch = prompts(tiny_llm.tokenizer, 6)
        together = engine.generate(batch, GREEDY)
        alone = [engine.generate([p], GREEDY)[0] for p in batch]
        assert [r.token_ids for r in together] == [r.token_ids for r in alone]
        assert all(len(r.token_ids) == 10 and r.finish_reason == "length" for r in together)
        assert engine.blocks.num_free == engine.blocks.num_blocks
    finally:
        engine.shutdown()


@pytest.mark.parametrize("kv_quant", ["int8", "int4"])
def test_speculative_drafts_over_a_quantized_cache_give_the_plain_greedy_output(tiny_llm, kv_quant):
    batch = [tiny_llm.tokenizer.encode("the quick brown fox jumps over the lazy dog " * (1 + i % 3) + str(i)) for i in range(12)]
    params = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)
    results = {}
    for speculative in ("none", "prompt_lookup"):
        engine = make_engine(tiny_llm, kv_quant=kv_quant, speculative=speculative)
        results[speculative] = ([r.token_ids for r in engine.generate(batch, params)], engine.stats())
        engine.shutdown()
    assert results["prompt_lookup"][0] == results["none"][0]
    assert results["prompt_lookup"][1]["accepted_draft_tokens"] > 0


def test_quantization_settings_that_cannot_work_are_refused_with_the_fix(tiny_llm):
    with pytest.raises(ConfigError, match="quant_calib is calibration text for quant=w8a8"):
        EngineConfig(quant_calib=CALIB)
    with pytest.raises(ConfigError, match="w8a8 takes auto"):
        EngineConfig(quant="w8a8", quant_kernel="packed")
    engine = make_engine(tiny_llm, "w8a16")
    engine.shutdown()
    with pytest.raises(ConfigError, match="already quantized.*drop --quant w8a8"):
        LLMEngine(engine.model, tiny_llm.tokenizer, EngineConfig(quant="w8a8", quant_calib=CALIB))

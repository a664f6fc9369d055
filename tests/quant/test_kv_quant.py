"""KV-cache int8/int4 (LMDeploy's quant_policy 8/4): the codec's error bound, paged attention close to the float
cache, capacity accounting against the real storage, and greedy outputs of the built-in model."""

from __future__ import annotations

import json

import pytest
import torch

from puyu.engine import EngineConfig, LLMEngine
from puyu.engine.kv_quant import decode, encode, row_bytes
from puyu.engine.paged_cache import PagedBatch, PagedKVCache, PrefillChunk
from puyu.errors import ConfigError
from puyu.generation import SamplingParams
from puyu.model.config import ModelConfig
from tests.conftest import DATASETS

# Attention output over random keys/values (unit normal, with outlier heads), relative to the float cache's:
# ||out_q - out_f|| / ||out_f||.  Measured 0.006 (int8) and 0.137 (int4: 15 steps per vector).
ATTENTION_TOLERANCE = {"int8": 0.015, "int4": 0.2}


def _config(**overrides) -> ModelConfig:
    base = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                max_position_embeddings=256)
    return ModelConfig(**{**base, **overrides})


@pytest.mark.parametrize("bits", [8, 4])
def test_the_codec_rounds_each_vector_to_its_own_grid_within_half_a_step(bits):
    torch.manual_seed(0)
    x = torch.randn(50, 3, 64) * torch.tensor([1.0, 10.0, 0.01])[None, :, None] + 3  # heads of very different ranges
    raw = encode(x, bits)
    assert raw.dtype == torch.uint8 and raw.shape == (50, 3, row_bytes(64, bits)) and row_bytes(64, bits) == 64 * bits // 8 + 4
    back = decode(raw, bits, torch.float32)
    step = (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / (2**bits - 1)
    assert ((back - x).abs() <= step * 0.5 + 1e-3 * x.abs()).all()  # half a step, plus float16 scale/zero rounding
    assert torch.equal(decode(encode(torch.full((2, 1, 64), 1.5), bits), bits, torch.float32), torch.full((2, 1, 64), 1.5))


def _step(cache: PagedKVCache, q, k, v, lengths: list[int]) -> torch.Tensor:
    """One step over ``cache``: sequence i occupies slots [i*256, i*256 + lengths[i]); the first ones decode their last
    position, the last one prefills its last 7 positions over a cached past."""
    decodes, prefill = lengths[:-1], lengths[-1]
    slots = [i * 256 + n - 1 for i, n in enumerate(decodes)] + [len(decodes) * 256 + j for j in range(prefill - 7, prefill)]
    longest = max(decodes)
    decode_slots = torch.tensor([[i * 256 + min(j, n - 1) for j in range(longest)] for i, n in enumerate(decodes)])
    mask = (torch.arange(longest)[None] < torch.tensor(decodes)[:, None])[:, None, None]
    context = len(decodes) * 256 + torch.arange(prefill)
    chunk = PrefillChunk(len(decodes), len(slots), prefill - 7, context)
    batch = PagedBatch(cache, torch.tensor(slots), len(decodes), decode_slots, mask, [chunk])
    return batch.attend(0, q, k, v)


@pytest.mark.parametrize("kv_quant", ["int8", "int4"])
def test_paged_attention_over_a_quantized_cache_stays_close_to_the_float_cache(kv_quant):
    torch.manual_seed(0)
    config = _config(num_layers=1)
    lengths = [40, 9, 100, 30]
    caches = {name: PagedKVCache(config, 64, 16, torch.float32, torch.device("cpu"), name) for name in ("none", kv_quant)}
    for cache in caches.values():  # the history: every position of every sequence, written as earlier steps would
        torch.manual_seed(1)
        for i, n in enumerate(lengths):
            k, v = torch.randn(n, 2, 16) * torch.tensor([1.0, 4.0])[:, None], torch.randn(n, 2, 16)
            cache.write(0, i * 256 + torch.arange(n), k, v)
    n = len(lengths) - 1 + 7
    q, k, v = torch.randn(1, 4, n, 16), torch.randn(1, 2, n, 16), torch.randn(1, 2, n, 16)
    exact = _step(caches["none"], q, k, v, lengths)
    quantized = _step(caches[kv_quant], q, k, v, lengths)
    error = ((quantized - exact).norm() / exact.norm()).item()
    assert error < ATTENTION_TOLERANCE[kv_quant]
    assert error > 0  # the quantized cache was really read
    assert caches[kv_quant].keys[0].dtype == torch.uint8


def test_capacity_grows_by_the_bytes_saved_and_the_accounting_matches_the_real_storage(tiny_llm, monkeypatch):
    import puyu.engine.engine as engine_module

    monkeypatch.setattr(engine_module, "_free_memory", lambda device: 2**22)  # 4 MiB free: the cache gets share 0.5 of it
    blocks = {}
    for kv_quant in ("none", "int8", "int4"):
        engine = LLMEngine(tiny_llm.model, tiny_llm.tokenizer, EngineConfig(kv_quant=kv_quant, cache_max_entry_count=0.5,
                                                                          max_num_seqs=10_000))
        cache = engine.cache
        real = sum(t.nbytes for t in cache.keys + cache.values)
        assert real == engine.stats()["kv_cache_bytes"] <= 2**21
        blocks[kv_quant] = cache.num_blocks
        engine.shutdown()
    # head_dim 16 in float32: 64 bytes a vector; int8 16 + 4, int4 8 + 4 (the float16 scale and zero).
    assert blocks["int8"] == pytest.approx(blocks["none"] * 64 / 20, abs=1)
    assert blocks["int4"] == pytest.approx(blocks["none"] * 64 / 12, abs=1)
    # The built-in model's shape (head_dim 64) against a bf16 cache: about 1.9x and 3.6x the blocks.
    smol = _config(hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64, num_layers=30)
    bf16 = PagedKVCache.bytes_per_block(smol, 16, torch.bfloat16)
    assert bf16 / PagedKVCache.bytes_per_block(smol, 16, torch.bfloat16, "int8") == pytest.approx(128 / 68)
    assert bf16 / PagedKVCache.bytes_per_block(smol, 16, torch.bfloat16, "int4") == pytest.approx(128 / 36)


def test_bad_kv_quant_settings_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="kv_quant must be one of none, int8, int4"):
        EngineConfig(kv_quant="fp8")
    with pytest.raises(ConfigError, match="head_dim divisible by 4"):
        PagedKVCache(_config(head_dim=6), 4, 16, torch.float32, torch.device("cpu"), "int4")


@pytest.mark.builtin
def test_greedy_first_tokens_of_the_builtin_model_match_the_float_cache(builtin_llm):
    """Share of 16 chat prompts whose greedy tokens equal the float cache's.  Measured: int8, all 8 first tokens of
    16/16 prompts; int4, the first token of 16/16 (a fresh prompt attends over its own float keys) and all 8 of 6/16."""
    rows = json.loads((DATASETS / "sft/llamafactory_demo/alpaca_en_demo.json").read_text())[:16]
    prompts = [builtin_llm.prompt_ids(row["instruction"]) for row in rows]
    params = SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)
    outputs = {}
    for kv_quant in ("none", "int8", "int4"):
        engine = LLMEngine(builtin_llm.model, builtin_llm.tokenizer, EngineConfig(kv_quant=kv_quant, num_blocks=256))
        outputs[kv_quant] = [r.token_ids for r in engine.generate(prompts, params)]
        assert engine.blocks.num_free == engine.blocks.num_blocks
        engine.shutdown()
    first = {name: sum(a[0] == b[0] for a, b in zip(outputs[name], outputs["none"])) for name in ("int8", "int4")}
    same = {name: sum(a == b for a, b in zip(outputs[name], outputs["none"])) for name in ("int8", "int4")}
    assert same["int8"] >= 15 and first["int4"] >= 15 and same["int4"] >= 3, (first, same)

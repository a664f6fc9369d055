"""`puyu serve` with quantization flags, through the official openai client: 32 concurrent streams of a W8A8 model
over an int8 KV cache (answers as when sent alone, every block back), /metrics naming the cache's storage and
capacity, and a server per remaining ``--quant``/``--kv-quant`` option."""

from __future__ import annotations

import re

import openai
import pytest

from tests.conftest import DATASETS
from tests.serve.conftest import metric, metrics, start_server, stop_server, streams_together_and_alone

CALIB = str(DATASETS / "pretrain/llamafactory_text/c4_demo.jsonl")


@pytest.fixture(scope="module")
def w8a8_int8_server(tiny_server_model, tmp_path_factory):
    """W8A8 weights and activations, int8 KV cache.

    No prefix caching: a cache hit reads the quantized prefix where a fresh prompt attends over its own float keys,
    so only then must a request sent alone answer exactly as inside the batch.
    """
    flags = ["--quant", "w8a8", "--quant-calib", CALIB, "--kv-quant", "int8", "--no-prefix-caching"]
    s = start_server(tiny_server_model, *flags, api_key=None, log=tmp_path_factory.mktemp("log") / "server.log")
    yield s
    stop_server(s)


def test_32_concurrent_streams_of_w8a8_over_an_int8_kv_cache_match_sequential_and_free_every_block(w8a8_int8_server):
    together, alone = streams_together_and_alone(w8a8_int8_server, None)
    assert all(together) and together[:4] == alone
    assert metric(w8a8_int8_server, "puyu_kv_usage") == 0 and metric(w8a8_int8_server, "puyu_running") == 0
    assert metric(w8a8_int8_server, "puyu_generation_tokens_total") >= 36 * 12


def test_metrics_name_the_kv_storage_and_its_capacity(w8a8_int8_server):
    text = metrics(w8a8_int8_server)
    assert re.search(r'^puyu_kv_cache_info\{.*kv_quant="int8".*\} 1\.0$', text, re.M)
    assert 'storage="int8+fp16 scale/zero"' in text
    blocks = metric(w8a8_int8_server, "puyu_kv_blocks_total")
    assert metric(w8a8_int8_server, "puyu_kv_cache_tokens") == blocks * 16
    # The tiny model: 2 layers x 2 KV heads x (16 int8 codes + 4 bytes of scale and zero), keys and values, 16 tokens a block.
    assert metric(w8a8_int8_server, "puyu_kv_cache_bytes") == blocks * 2 * 2 * 2 * 20 * 16


@pytest.mark.parametrize("flags", [["--quant", "w8a16", "--kv-quant", "int4"], ["--quant", "w4a16"]], ids=["w8a16-int4", "w4a16"])
def test_each_quant_option_serves_streams_and_reports_its_cache(tiny_server_model, tmp_path, flags):
    s = start_server(tiny_server_model, *flags, api_key=None, log=tmp_path / "server.log")
    try:
        client = openai.OpenAI(base_url=s.url, api_key="none", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": "Hello there"}]
        full = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=10)
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tiny", messages=messages, temperature=0, max_tokens=10, stream=True) if c.choices)
        assert full.usage.completion_tokens == 10 and streamed == full.choices[0].message.content
        kv_quant = flags[flags.index("--kv-quant") + 1] if "--kv-quant" in flags else "none"
        assert f'kv_quant="{kv_quant}"' in metrics(s)
        assert metric(s, "puyu_kv_usage") == 0
        log = s.log.read_text()
        assert "Traceback" not in log
    finally:
        stop_server(s)

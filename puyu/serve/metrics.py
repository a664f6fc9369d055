"""Prometheus metrics of the server: engine gauges and counters read at scrape time, latency histograms.

``GET /metrics`` exposes, with the prefix ``puyu_``: running and waiting
requests, KV block usage, the KV cache's capacity (blocks, tokens, bytes) and
storage (``puyu_kv_cache_info{kv_quant, storage}``), prefix-cache hits, preemptions, prompt/generation
token counters, speculative draft tokens verified and accepted (and the
acceptance rate), generation tokens/s over the last 10 s, and histograms of
time to first token, inter-token latency and end-to-end request latency.
"""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from puyu.engine import LLMEngine

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _EngineCollector:
    def __init__(self, engine: LLMEngine, rate: "_TokenRate"):
        self.engine, self.rate = engine, rate

    def collect(self):
        s = self.engine.stats()
        for name, help_text in [("running", "requests in the running batch"), ("waiting", "requests waiting to be scheduled"),
                                ("kv_usage", "fraction of KV-cache blocks in use"), ("kv_blocks_total", "KV-cache blocks")]:
            yield GaugeMetricFamily(f"puyu_{name}", help_text, value=s[name])
        cache = self.engine.cache
        yield GaugeMetricFamily("puyu_kv_cache_tokens", "tokens the KV cache holds", value=cache.num_blocks * cache.block_size)
        yield GaugeMetricFamily("puyu_kv_cache_bytes", "bytes of KV-cache storage (codes plus scales and zeros when quantized)",
                                value=s["kv_cache_bytes"])
        yield InfoMetricFamily("puyu_kv_cache", "KV-cache storage: kv_quant none, int8 or int4",
                               value={"kv_quant": cache.kv_quant, "storage": cache.storage_dtype, "block_size": str(cache.block_size)})
        yield GaugeMetricFamily("puyu_generation_tokens_per_second", "generated tokens per second over the last 10 s",
                                value=self.rate.per_second(s["generation_tokens"]))
        for name, help_text in [("prompt_tokens", "prompt tokens processed"), ("generation_tokens", "tokens generated"),
                                ("requests", "requests finished"), ("preemptions", "sequences preempted for KV blocks"),
                                ("prefix_cache_hit_blocks", "KV blocks reused from the prefix cache"),
                                ("draft_tokens", "speculative draft tokens verified"),
                                ("accepted_draft_tokens", "speculative draft tokens accepted")]:
            yield CounterMetricFamily(f"puyu_{name}", help_text, value=s[name])
        yield GaugeMetricFamily("puyu_draft_acceptance_rate", "accepted / verified speculative draft tokens so far (0 without drafts)",
                                value=s["accepted_draft_tokens"] / s["draft_tokens"] if s["draft_tokens"] else 0.0)


class _TokenRate:
    def __init__(self, window: float = 10.0):
        self.window = window
        self.samples: deque[tuple[float, float]] = deque()

    def per_second(self, total: float) -> float:
        now = time.monotonic()
        self.samples.append((now, total))
        while len(self.samples) > 1 and now - self.samples[0][0] > self.window:
            self.samples.popleft()
        (t0, v0), (t1, v1) = self.samples[0], self.samples[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0


class ServerMetrics:
    def __init__(self, engine: LLMEngine):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine, _TokenRate()))
        self.ttft = Histogram("puyu_time_to_first_token_seconds", "time to first token", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.itl = Histogram("puyu_inter_token_latency_seconds", "time between tokens", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.e2e = Histogram("puyu_e2e_request_latency_seconds", "request latency", buckets=LATENCY_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

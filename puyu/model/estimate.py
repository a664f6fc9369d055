"""What a model costs on this machine, from its config alone, before any weight is read.

``estimate(config, dtype)`` -> :class:`Estimate`: parameters (counted from the
layout, as :class:`~puyu.model.transformer.Transformer` builds it), weight bytes
in ``dtype``, KV-cache bytes per token, this machine's RAM (total and available,
from ``/proc/meminfo``) and the context that fits beside the weights, and the
decode speed to expect at batch 1.  A decode step costs two things: reading
every weight once (the embedding only as the LM head when tied) at the
machine's memory bandwidth, and launching the step's few hundred small
operations one by one (eager PyTorch), which for a small model costs as much
as the reading.  So ``seconds per token ~= bytes read per token / bandwidth +
step overhead``: the bandwidth is measured once per process (a 256 MiB copy,
best of 5) and the overhead by timing decode steps of a miniature model with
the same layers and operations (hidden size 64: nothing to read, only
launches), unless given; a busy machine gives lower figures.  It is an
estimate, not a bound (SmolLM2-135M in float32 on 2 AVX-512/AMX cores: 29 tok/s
from bandwidth alone, 21 with the measured overhead, 17.8 measured by
``bench/decode.py``).  :func:`check_fits` is the
loading path's guard: a model whose weights exceed the machine's RAM is refused
with these figures instead of being killed by the OOM killer halfway through.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from dataclasses import dataclass

import torch

from puyu.errors import ModelLoadError
from puyu.model.architectures import BY_ARCH
from puyu.model.config import ModelConfig

log = logging.getLogger(__name__)
GB = 1e9


def parameter_count(c: ModelConfig) -> int:
    """Parameters of ``c``'s model (tied embeddings counted once)."""
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    attention = c.hidden_size * (q + 2 * kv) + q * c.hidden_size
    attention += (q + 2 * kv) * c.qkv_bias + c.hidden_size * c.o_bias + 2 * c.head_dim * c.qk_norm
    mlp = 3 * c.hidden_size * c.intermediate_size + (2 * c.intermediate_size + c.hidden_size) * c.mlp_bias
    per_layer = attention + mlp + 2 * c.hidden_size
    embeddings = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
    return c.num_layers * per_layer + embeddings + c.hidden_size


def kv_bytes_per_token(c: ModelConfig, dtype: torch.dtype) -> int:
    """Key + value cache bytes that one token adds (all layers)."""
    return 2 * c.num_layers * c.num_kv_heads * c.head_dim * dtype.itemsize


def memory() -> tuple[int, int]:
    """``(total, available)`` RAM bytes of this machine (available = MemAvailable on Linux, else total)."""
    try:
        info = dict(line.split(":", 1) for line in open("/proc/meminfo", encoding="ascii"))
        return int(info["MemTotal"].split()[0]) * 1024, int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total, total


@functools.lru_cache(maxsize=1)
def measured_bandwidth() -> float:
    """Memory bandwidth in bytes/s: a 256 MiB tensor copied with PyTorch's threads, best of 5 (read + write counted)."""
    src = torch.ones(64 * 2**20)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def measured_step_overhead(config: ModelConfig, steps: int = 16) -> float:
    """Seconds of one eager decode step of a miniature ``config`` (its layers, operations and cache; hidden size 64,
    vocabulary 256): the launch cost a decode step pays besides reading the weights; median of ``steps``."""
    from puyu.model.transformer import Transformer  # noqa: PLC0415  (the model only when an estimate is asked for)

    heads = max(1, config.num_heads // max(1, config.num_kv_heads))  # keep the grouping of query heads per kv head
    tiny = dataclasses.replace(config, vocab_size=256, hidden_size=64, intermediate_size=128, num_heads=heads * 2,
                               num_kv_heads=2, head_dim=16, max_position_embeddings=steps + 8)
    model = Transformer(tiny).eval()
    cache = model.new_cache(1, steps + 8)
    times = []
    with torch.inference_mode():
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache, logits_to_keep=1)
        token = torch.zeros(1, 1, dtype=torch.long)
        for _ in range(steps):
            start = time.perf_counter()
            model(token, cache=cache)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@dataclass
class Estimate:
    """Figures of one model in one dtype on this machine (bytes, tokens and tokens/s)."""

    hf_class: str
    parameters: int
    dtype: torch.dtype
    weight_bytes: int
    kv_bytes_per_token: int
    context: int
    ram_total: int
    ram_available: int
    bandwidth: float
    read_bytes_per_token: int  # weights a decode step streams (the input embedding is only looked up)
    step_overhead: float = 0.0  # seconds a decode step spends launching its operations

    @property
    def decode_tok_s(self) -> float:
        """Expected batch-1 decode speed: weights read at the bandwidth, plus the step overhead."""
        return 1 / (self.read_bytes_per_token / self.bandwidth + self.step_overhead)

    @property
    def fits(self) -> bool:
        """Weights plus the KV cache of one full-context sequence fit in the available RAM."""
        return self.weight_bytes + self.kv_bytes_per_token * self.context <= self.ram_available

    @property
    def context_that_fits(self) -> int:
        """Tokens of KV cache (one sequence) that fit in the available RAM beside the weights."""
        return max(0, (self.ram_available - self.weight_bytes) // self.kv_bytes_per_token)

    def lines(self) -> list[str]:
        """The estimate in words, one figure per line."""
        dtype = str(self.dtype).removeprefix("torch.")
        if self.fits:
            verdict = "fits"
        elif self.context_that_fits:
            verdict = f"the weights fit, with KV cache for {self.context_that_fits:,} tokens"
        elif self.weight_bytes <= self.ram_total:
            verdict = "does NOT fit in the RAM available now (it would in this machine's total, with other programs closed)"
        else:
            verdict = "does NOT fit this machine"
        return [
            f"{self.hf_class}: {self.parameters / 1e9:.2f} B parameters, {self.weight_bytes / GB:.2f} GB of weights in {dtype}",
            f"KV cache: {self.kv_bytes_per_token / 1024:.0f} KiB per token ({self.kv_bytes_per_token * self.context / GB:.2f} GB "
            f"for the {self.context:,}-token context)",
            f"this machine: {self.ram_total / GB:.1f} GB RAM, {self.ram_available / GB:.1f} GB available -> {verdict}",
            f"decode, batch 1: ~{self.decode_tok_s:.1f} tok/s expected ({self.read_bytes_per_token / GB:.2f} GB read per token "
            f"at {self.bandwidth / GB:.1f} GB/s = {1e3 * self.read_bytes_per_token / self.bandwidth:.0f} ms, plus "
            f"{1e3 * self.step_overhead:.0f} ms launching the step's operations)",
        ]


def estimate(config: ModelConfig, dtype: torch.dtype, context: int | None = None, bandwidth: float | None = None,
             ram: tuple[int, int] | None = None, step_overhead: float | None = None) -> Estimate:
    """The figures of ``config`` in ``dtype`` (see the module docstring); ``context`` defaults to the model's own."""
    params = parameter_count(config)
    weight_bytes = params * dtype.itemsize
    embedding = config.vocab_size * config.hidden_size * (0 if config.tie_word_embeddings else 1)  # looked up, not streamed
    bandwidth = bandwidth or measured_bandwidth()
    total, available = ram or memory()
    return Estimate(BY_ARCH[config.arch].hf_class, params, dtype, weight_bytes, kv_bytes_per_token(config, dtype),
                    context or config.max_position_embeddings, total, available, bandwidth, (params - embedding) * dtype.itemsize,
                    measured_step_overhead(config) if step_overhead is None else step_overhead)


def check_fits(config: ModelConfig, dtype: torch.dtype, where: str) -> None:
    """Refuse a model whose weights exceed this machine's RAM; warn when they exceed the available RAM.

    Raises:
        ModelLoadError: the weights alone are larger than the machine's total RAM (figures and options included).
    """
    total, available = memory()
    need = parameter_count(config) * dtype.itemsize
    log.info("%s: %.2f B parameters, %.2f GB of weights in %s, %.0f KiB of KV cache per token; %.1f GB of RAM available", where,
             parameter_count(config) / 1e9, need / GB, str(dtype).removeprefix("torch."), kv_bytes_per_token(config, dtype) / 1024,
             available / GB)
    if need > total:
        raise ModelLoadError(f"{where} needs {need / GB:.1f} GB for its weights in {str(dtype).removeprefix('torch.')} "
                             f"({parameter_count(config) / 1e9:.2f} B parameters) but this machine has {total / GB:.1f} GB of RAM; "
                             "use a smaller model, --dtype bfloat16, or a quantized (AWQ/GPTQ/GGUF) version")
    if need > available:
        log.warning("%s needs %.1f GB for its weights but only %.1f GB of RAM is available; loading may swap or be killed",
                    where, need / GB, available / GB)

"""Engine settings, one dataclass (the CLI's flags are generated from it)."""

from __future__ import annotations

from dataclasses import dataclass

from puyu.errors import ConfigError
from puyu.quant.weight_only import KERNELS as QUANT_KERNELS

QUANT_MODES = ("none", "w8a16", "w4a16")
SPECULATIVE = ("none", "prompt_lookup")


@dataclass
class EngineConfig:
    """How the serving engine batches and caches.

    Attributes:
        block_size: tokens per KV-cache block.
        cache_max_entry_count: KV cache size: a fraction (0-1] of the memory free after loading the model, or gigabytes
            when above 1 (default: 0.8 on CUDA, 0.1 on the CPU, whose memory the rest of the machine shares).
        num_blocks: exact number of KV blocks, overriding cache_max_entry_count (0: size the cache from memory).
        max_num_seqs: most sequences in the running batch.
        max_num_batched_tokens: most tokens computed in one step; longer prompts are prefilled in chunks.
        max_queue: most requests in the engine, running or waiting; beyond it new ones are refused (HTTP 429).
        prefix_caching: reuse the KV blocks of prompts that share a prefix.
        quant: weight-only quantization at load: none, w8a16 (int8 per output channel) or w4a16 (int4 group-wise).
        quant_group_size: input channels per int4 group (w4a16).
        quant_kernel: how quantized layers compute: auto (packed int4/int8 kernels on the CPU, fed bf16 activations,
            their only vectorized path; dequantize elsewhere), packed, or dequantize (the reference path).
        compile: torch.compile the decode step (steps without prompt tokens): on the CPU it fuses the many small
            per-layer ops, about 1.35x faster decode, after a one-off compile when the engine starts (about a
            minute on 2 AVX-512 cores, four to five on 2 AVX2 cores; needs a C++ compiler).
        speculative: none, or prompt_lookup: greedy requests draft tokens copied from their own context (n-gram
            match) and verify them in one step; identical output, several tokens per step where the answer quotes
            its prompt (RAG, summaries, code edits).
        num_speculative_tokens: most draft tokens per sequence and step (prompt_lookup).
    """

    block_size: int = 16
    cache_max_entry_count: float | None = None
    num_blocks: int = 0
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024
    max_queue: int = 512
    prefix_caching: bool = True
    quant: str = "none"
    quant_group_size: int = 32
    quant_kernel: str = "auto"
    compile: bool = False
    speculative: str = "none"
    num_speculative_tokens: int = 4

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.max_queue < 1:
            raise ConfigError("engine: block_size, max_num_seqs, max_num_batched_tokens and max_queue must be positive")
        if self.cache_max_entry_count is not None and self.cache_max_entry_count <= 0:
            raise ConfigError(f"engine: cache_max_entry_count must be > 0, got {self.cache_max_entry_count}")
        if self.quant not in QUANT_MODES:
            raise ConfigError(f"engine: quant must be one of {', '.join(QUANT_MODES)}, got {self.quant!r}")
        if self.speculative not in SPECULATIVE:
            raise ConfigError(f"engine: speculative must be one of {', '.join(SPECULATIVE)}, got {self.speculative!r}")
        if not 1 <= self.num_speculative_tokens <= 16:
            raise ConfigError(f"engine: num_speculative_tokens must be 1-16, got {self.num_speculative_tokens}")
        if self.quant_kernel not in QUANT_KERNELS:
            raise ConfigError(f"engine: quant_kernel must be one of {', '.join(QUANT_KERNELS)}, got {self.quant_kernel!r}")
        if self.quant_group_size not in (32, 64, 128, 256):
            raise ConfigError(f"engine: quant_group_size must be 32, 64, 128 or 256, got {self.quant_group_size}")

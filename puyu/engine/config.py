"""Engine settings, one dataclass (the CLI's flags are generated from it)."""

from __future__ import annotations

from dataclasses import dataclass

from puyu.engine.kv_quant import KV_QUANT
from puyu.errors import ConfigError
from puyu.quant.quantize import INFERENCE_MODES
from puyu.quant.weight_only import KERNELS as QUANT_KERNELS

SPECULATIVE = ("auto", "none", "prompt_lookup", "draft_model")
DRAFT_QUANT = ("none", "w8a16", "w4a16", "w4a8")


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
        quant: quantization at load: none, w8a16 (int8 weights per output channel), w4a16 (int4 group-wise), w4a8
            (w4a16's weights, activations quantized per block of 32 to int8 instead of int16 in puyu's CPU kernels:
            llama.cpp's Q4_1 x Q8_1 scheme, about 1.8x the batched and prompt products on AVX-512 VNNI, 1.3x on AVX2), or w8a8
            (SmoothQuant: int8 weights and per-token int8 activations through an int8 GEMM, after a short calibration on
            quant_calib); puyu serve's auto (w4a16 where it is faster and lossless) is decided before the model loads.
        quant_calib: calibration text for quant=w8a8: a .jsonl (a 'text' field per row) or .txt file (default: the
            pre-training samples under $PUYU_DATA_DIR/pretrain).
        kv_quant: KV-cache storage: none (the model's dtype), int8 or int4 (LMDeploy's quant_policy 8/4: per token and
            head, asymmetric, float16 scale and zero beside the codes); with 64-wide heads 1.9x (int8) or 3.6x (int4) the
            tokens of a bf16 cache in the same memory, 3.8x or 7.1x those of a float32 one.
        quant_group_size: input channels per int4 group (w4a16, w4a8).
        quant_kernel: how quantized layers compute: auto (w8a16/w4a16/w4a8: puyu's AVX2/AVX-512 int4/int8 kernels on an x86
            CPU, PyTorch's packed kernels on other CPUs, dequantize elsewhere; w8a8: the int8 GEMM torch._int_mm), avx2,
            packed (w8a16/w4a16/w4a8), or dequantize (the reference path).
        compile: torch.compile the decode step (steps without prompt tokens): on the CPU it fuses the many small
            per-layer ops, about 1.35x faster decode, after a one-off compile when the engine starts (about a
            minute on 2 AVX-512 cores, four to five on 2 AVX2 cores; needs a C++ compiler).
        speculative: none; prompt_lookup: greedy requests draft tokens copied from their own context (n-gram
            match) and verify them in one step; identical output, several tokens per step where the answer quotes
            its prompt (RAG, summaries, code edits); draft_model: the draft_model decodes the drafts (implied when
            draft_model is given); auto: prompt lookup while at most 2 sequences run, where verification is exact
            (a float32 cache on a CPU with puyu's kernels), else none.  A lone stream's step is bound by reading the
            weights, so a few more rows cost little (measured: MT-Bench answers at temperature 0, one at a time,
            +8-15%); at 4 and 8 sequences the step is bound by the products and drafts cost 7-12%.
        num_speculative_tokens: most draft tokens per sequence and step.
        draft_model: the draft model of speculative=draft_model: a registered name, a Hugging Face folder or a .gguf
            file with the served model's vocabulary (a smaller model of its family, or the served model itself with
            draft_quant); greedy outputs stay the served model's own.
        draft_quant: quantize the draft model at load: none, w8a16, w4a16 or w4a8 (w4a8 of the served model itself
            drafts a float32 or bf16 model cheaply).
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
    quant_calib: str | None = None
    kv_quant: str = "none"
    compile: bool = False
    speculative: str = "auto"
    num_speculative_tokens: int = 4
    draft_model: str | None = None
    draft_quant: str = "none"

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.max_queue < 1:
            raise ConfigError("engine: block_size, max_num_seqs, max_num_batched_tokens and max_queue must be positive")
        if self.cache_max_entry_count is not None and self.cache_max_entry_count <= 0:
            raise ConfigError(f"engine: cache_max_entry_count must be > 0, got {self.cache_max_entry_count}")
        if self.quant not in INFERENCE_MODES:
            raise ConfigError(f"engine: quant must be one of {', '.join(INFERENCE_MODES)}, got {self.quant!r}")
        if self.kv_quant not in KV_QUANT:
            raise ConfigError(f"engine: kv_quant must be one of {', '.join(KV_QUANT)}, got {self.kv_quant!r}")
        if self.quant == "w8a8" and self.quant_kernel == "packed":
            raise ConfigError("engine: quant_kernel=packed is the weight-only kernel (w8a16/w4a16); w8a8 takes auto (int8 GEMM) "
                              "or dequantize")
        if self.quant_calib is not None and self.quant != "w8a8":
            raise ConfigError(f"engine: quant_calib is calibration text for quant=w8a8; quant is {self.quant!r}")
        if self.speculative not in SPECULATIVE:
            raise ConfigError(f"engine: speculative must be one of {', '.join(SPECULATIVE)}, got {self.speculative!r}")
        if self.draft_model and self.speculative in ("auto", "none"):
            self.speculative = "draft_model"
        if (self.speculative == "draft_model") != bool(self.draft_model):
            raise ConfigError("engine: speculative=draft_model needs a draft_model (a name, folder or .gguf), and a "
                              f"draft_model needs speculative=draft_model (speculative is {self.speculative!r})")
        if self.draft_quant not in DRAFT_QUANT:
            raise ConfigError(f"engine: draft_quant must be one of {', '.join(DRAFT_QUANT)}, got {self.draft_quant!r}")
        if not 1 <= self.num_speculative_tokens <= 16:
            raise ConfigError(f"engine: num_speculative_tokens must be 1-16, got {self.num_speculative_tokens}")
        if self.quant_kernel not in QUANT_KERNELS:
            raise ConfigError(f"engine: quant_kernel must be one of {', '.join(QUANT_KERNELS)}, got {self.quant_kernel!r}")
        if self.quant_group_size not in (32, 64, 128, 256):
            raise ConfigError(f"engine: quant_group_size must be 32, 64, 128 or 256, got {self.quant_group_size}")

"""Model FLOPs utilisation: the FLOPs a training token costs, and the peak the device could give.

``flops_per_token(config, seq_len)`` is PaLM's count (appendix B): ``6 N`` for
the matrix parameters (the LM head included, the embedding lookup not) plus
``12 * layers * heads * head_dim * seq_len`` for attention scores and values,
forward and backward.  (With packed rows the block-diagonal mask skips part of
the attention; it is counted in full, as PaLM and nanoGPT do.)

``peak_flops(device, dtype)`` is the dense peak per device: the vendor's figure
for the GPUs listed in :data:`GPU_PEAKS`, else a measured one (the fastest of
many square matmuls in ``dtype`` within 0.3 s at the start of the run), which
is what a CPU gives (its clock and vector units vary; if other processes load
the CPU throughout that moment, the peak reads low and MFU high).
MFU = achieved FLOP/s / (peak x processes).
"""

from __future__ import annotations

import functools
import time

import torch

from puyu.model.config import ModelConfig
from puyu.train.scratch import parameter_count

# Dense TFLOP/s (no sparsity): (bf16/fp16 tensor cores, fp32 - TF32 is not used by default).
GPU_PEAKS = {"H200": (989e12, 67e12), "H100": (989e12, 67e12), "A100": (312e12, 19.5e12), "L40S": (362e12, 91.6e12),
             "L4": (121e12, 30.3e12), "A10": (125e12, 31.2e12), "4090": (165e12, 82.6e12), "3090": (71e12, 35.6e12)}


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of a model of ``config`` on rows of ``seq_len``."""
    _, non_embedding = parameter_count(config)
    matrix = non_embedding + config.vocab_size * config.hidden_size  # the LM head, tied or not
    return 6.0 * matrix + 12.0 * config.num_layers * config.num_heads * config.head_dim * seq_len


@functools.lru_cache(maxsize=8)
def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Dense FLOP/s of one ``device`` in ``dtype`` (see the module docstring)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (half, full) in GPU_PEAKS.items():
            if key in name:
                return half if dtype in (torch.bfloat16, torch.float16) else full
    n = 1024 if device.type == "cpu" else 8192
    a = torch.full((n, n), 0.5, device=device, dtype=dtype)  # no RNG draw: training stays reproducible
    b = torch.full((n, n), 0.25, device=device, dtype=dtype)
    a @ b  # warm-up
    fastest, began = float("inf"), time.perf_counter()
    while time.perf_counter() - began < 0.3:  # the fastest of many short runs: a busy machine slows some, not all
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        fastest = min(fastest, time.perf_counter() - start)
    return 2.0 * n**3 / fastest

"""Models from scratch: named sizes, the model config of a ``pretrain`` section, and the initialisation.

Sizes (decoder shapes; the vocabulary always comes from the tokenizer, the
embedding is tied to the LM head below 1B parameters, as in SmolLM2)::

    pico     hidden  64, 2 layers,  4 heads / 2 kv   (tests; ~0.1M + embedding)
    nano     hidden 128, 4 layers,  4 heads / 2 kv   (~0.8M + embedding: the 2-core CPU example)
    micro    hidden 256, 6 layers,  4 heads / 2 kv   (~4.7M + embedding)
    mini     hidden 384, 8 layers,  6 heads / 2 kv   (~12.6M + embedding)
    smollm2-135m   the built-in model's shape: hidden 576, 30 layers, 9 / 3 heads
    smollm2-360m   hidden 960, 32 layers, 15 / 5 heads (GPU)
    internlm2-1.8b hidden 2048, 24 layers, 16 / 8 heads (GPU)

Initialisation (:func:`init_weights`) follows the reference implementations:
every linear and embedding weight ~ normal(0, ``init_std``) (transformers'
``LlamaPreTrainedModel._init_weights`` with ``initializer_range``), biases 0,
RMSNorm weights 1; with ``scaled_init`` the projections that write into the
residual stream (``o_proj``, ``down_proj``) use ``init_std / sqrt(2 *
num_layers)`` - GPT-2's and Megatron-LM's ``scaled_init_method_normal``, which
InternEvo (InternLM's training framework) uses for ``wo``/``w2`` - so the
residual's variance does not grow with depth.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from puyu.errors import ConfigError
from puyu.model.config import ModelConfig
from puyu.model.transformer import RMSNorm, Transformer

SIZES: dict[str, dict[str, Any]] = {
    "pico": dict(hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2),
    "nano": dict(hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=2),
    "micro": dict(hidden_size=256, intermediate_size=768, num_layers=6, num_heads=4, num_kv_heads=2),
    "mini": dict(hidden_size=384, intermediate_size=1024, num_layers=8, num_heads=6, num_kv_heads=2),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
                         rope_theta=100000.0, rms_norm_eps=1e-5),
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_layers=32, num_heads=15, num_kv_heads=5,
                         rope_theta=100000.0, rms_norm_eps=1e-5),
    "internlm2-1.8b": dict(hidden_size=2048, intermediate_size=8192, num_layers=24, num_heads=16, num_kv_heads=8,
                           rope_theta=1000000.0, tie_word_embeddings=False),
}
ARCHS = ("llama", "internlm2", "qwen2", "mistral")
RESIDUAL_OUTPUTS = ("o_proj", "down_proj")


def model_config(size: str, arch: str, vocab_size: int, seq_len: int, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a named size in layout ``arch`` with ``overrides`` on top.

    Raises:
        ConfigError: an unknown size, layout or override key.
    """
    if size not in SIZES:
        raise ConfigError(f"pretrain.size {size!r} is unknown; use one of {', '.join(SIZES)} (and pretrain.model to change fields)")
    if arch not in ARCHS:
        raise ConfigError(f"pretrain.arch {arch!r} is unknown; use one of {', '.join(ARCHS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"arch", "vocab_size", "extra"}
    unknown = sorted(set(overrides or {}) - fields)
    if unknown:
        raise ConfigError(f"pretrain.model has unknown keys {unknown}; valid keys: {', '.join(sorted(fields))}")
    values: dict[str, Any] = dict(rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, max_position_embeddings=seq_len)
    values.update(SIZES[size])
    values.update(overrides or {})
    if "head_dim" not in (overrides or {}):
        values["head_dim"] = values["hidden_size"] // values["num_heads"]
    values["max_position_embeddings"] = max(int(values["max_position_embeddings"]), seq_len)
    values["qkv_bias"] = values.get("qkv_bias", arch == "qwen2")
    try:
        return ModelConfig(arch=arch, vocab_size=vocab_size, **values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pretrain.model: {exc}") from None


@torch.no_grad()
def init_weights(model: Transformer, std: float, scaled: bool) -> None:
    """Initialise ``model`` in place (see the module docstring); draws from torch's global RNG."""
    residual_std = std / math.sqrt(2 * model.config.num_layers) if scaled else std
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.normal_(0.0, residual_std if name.endswith(RESIDUAL_OUTPUTS) else std)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)


def new_model(config: ModelConfig, std: float, scaled: bool, device: torch.device | str = "cpu") -> Transformer:
    """A freshly initialised fp32 :class:`Transformer` of ``config`` on ``device``."""
    with torch.device(device):
        model = Transformer(config)
    init_weights(model, std, scaled)
    return model


def parameter_count(config: ModelConfig) -> tuple[int, int]:
    """(all parameters, parameters outside the embedding) of a model of ``config``."""
    with torch.device("meta"):
        model = Transformer(config)
    total = sum(p.numel() for p in model.parameters())
    return total, total - model.model.embed_tokens.weight.numel()

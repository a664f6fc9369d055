"""One entry point for weight quantization with calibration: RTN, AWQ or GPTQ into int4 :class:`IntWeight` layers.

``weights = quantize_weights(model, "awq", spec, tokens)`` quantizes the decoder's projections (the LM head and
embeddings stay in float) and returns their integer weights by module path; :func:`apply_weights` turns the model
into the in-memory twin of the folder ``save_quantized`` writes (:mod:`puyu.model.hf_io`), and
``load_model(folder)`` reads that folder back into the same layers.
"""

from __future__ import annotations

import torch
from torch import nn

from puyu.errors import ConfigError
from puyu.quant.awq import awq_quantize
from puyu.quant.calibration import LAYER_LINEARS
from puyu.quant.formats import IntWeight, QuantSpec, check_group_size, rtn_weight
from puyu.quant.gptq import gptq_quantize
from puyu.quant.w8a8 import W8A8Linear
from puyu.quant.weight_only import apply_int_weights, is_quantized, quantize_model

METHODS = ("rtn", "awq", "gptq")
DEFAULT_FORMAT = {"rtn": "gptq", "awq": "awq", "gptq": "gptq"}
INFERENCE_MODES = ("none", "w8a16", "w4a16", "w4a8", "w8a8")  # --quant at load (quantize_for_inference)


def quantize_weights(model: nn.Module, method: str, spec: QuantSpec, tokens: torch.Tensor | None = None, progress: bool = True,
                     **options) -> dict[str, IntWeight]:
    """Int4 weights of every decoder projection by ``method`` (``tokens`` ``[samples, seqlen]``: calibration, for awq/gptq).

    ``options`` go to :func:`~puyu.quant.awq.awq_quantize` or :func:`~puyu.quant.gptq.gptq_quantize`.  AWQ folds its
    scales into the model's norms; GPTQ leaves the dequantized weights in its linears.

    Raises:
        ConfigError: an unknown method, a model already quantized or fused, a group size that does not divide
            every layer's input width, or no calibration tokens for awq/gptq.
    """
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is unknown; use {', '.join(METHODS)}")
    if is_quantized(model):
        raise ConfigError("the model is already quantized (a quantized folder?); give the float model to quantize")
    layers = model.model.layers
    if any(getattr(layer.self_attn, "qkv_proj", None) is not None for layer in layers):
        raise ConfigError("the model's projections are fused (inference-only); load it again to quantize it")
    linears = {f"model.layers.{i}.{name}": layer.get_submodule(name) for i, layer in enumerate(layers) for name in LAYER_LINEARS}
    check_group_size({name: m.in_features for name, m in linears.items()}, spec.group_size)
    if method == "rtn":
        return {name: rtn_weight(m.weight, spec.group_size, spec.sym, spec.min_zero, m.bias) for name, m in linears.items()}
    if tokens is None:
        raise ConfigError(f"--method {method} needs calibration text")
    if method == "awq":
        return awq_quantize(model, tokens, spec, progress=progress, **options)
    return gptq_quantize(model, tokens, spec, progress=progress, **options)


@torch.no_grad()
def apply_weights(model: nn.Module, weights: dict[str, IntWeight], kernel: str = "auto") -> nn.Module:
    """Make ``model`` what loading its saved folder gives: int4 linears from ``weights``, other tensors rounded to fp16."""
    apply_int_weights(model, weights, kernel)
    for param in model.parameters():
        param.copy_(param.half().to(param.dtype))
    return model


def quantize_for_inference(model: nn.Module, tokenizer, mode: str, group_size: int = 32, kernel: str = "auto",
                           calib: str | None = None) -> None:
    """``--quant MODE`` at load, in place: w8a16/w4a16/w4a8 round-to-nearest, or w8a8 SmoothQuant calibrated on ``calib``.

    q/k/v and gate/up are fused first (fewer, wider int kernels), so the model is for inference only afterwards.
    LoRA adapters the loader kept unmerged (``load_model(..., quantized=True)``) stay in float beside the int
    weights for w8a16/w4a16/w4a8, and are merged before w8a8.

    Raises:
        ConfigError: an unknown mode, or the model is already quantized (a quantized folder, or quantized before).
    """
    if mode not in INFERENCE_MODES[1:]:
        raise ConfigError(f"--quant {mode!r} is unknown; use {', '.join(INFERENCE_MODES[1:])} (or a folder from puyu quantize)")
    if is_quantized(model) or any(isinstance(m, W8A8Linear) for m in model.modules()):
        raise ConfigError(f"the model is already quantized (a quantized folder, or quantized before); drop --quant {mode}, "
                          "or give the float model")
    if mode == "w8a8":  # per-channel int8 rounds merged weights finely; smoothing folds scales into plain linears
        model.merge_adapters()
    model.fuse_projections()
    if mode == "w8a8":
        from puyu.quant.smoothquant import smoothquant

        smoothquant(model, tokenizer, source=calib, kernel=kernel)
    else:
        quantize_model(model, mode, group_size, kernel)

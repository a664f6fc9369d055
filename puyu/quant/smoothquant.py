"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights, then W8A8.

A linear ``y = x W^T`` whose input channel ``j`` reaches ``a_j = max |x_j|`` on
calibration text, and whose weight column reaches ``w_j = max_o |W_oj|``, gets
the smoothing scale ``s_j = a_j^alpha / w_j^(1 - alpha)``; then
``(x / s) (W s)^T = x W^T`` exactly, while ``x / s`` has far smaller outliers to
quantize per token.  The division is folded into whatever produces ``x``, so it
costs nothing at run time:

* ``qkv_proj`` / ``gate_up_proj``: the preceding RMSNorm's weight;
* ``o_proj``: the value rows of ``qkv_proj`` (attention outputs are weighted
  sums of values); with grouped-query attention the query heads of one KV head
  share one scale, the maximum over the group;
* ``down_proj``: the ``up`` rows of ``gate_up_proj`` (``silu(gate) * up`` is
  linear in ``up``).

The migration strength ``alpha`` is searched per projection by default
(:func:`search_alpha`: the grid value whose smoothed W8A8 output is closest
to the float output on sampled calibration rows), as later SmoothQuant work
does.  After smoothing, each projection's :data:`OUTLIERS` input channels with
the largest smoothed range stay in float (LLM.int8()'s mixed-precision
decomposition, with the channels fixed at calibration; see
:class:`~puyu.quant.w8a8.W8A8Linear`).  The LM head stays int8 weight-only
(:class:`~puyu.quant.weight_only.Int8Linear`), as SmoothQuant keeps it out of
W8A8.

Perplexity change on the built-in model's held-out text (``bench/quant.py``,
24k tokens, float32 reference path), measured while building this:

* smoothing alone, searched alpha: +1.15% (a float head: +1.08%; the int8 head
  alone costs +0.07%).  By projection, each alone W8A8: ``down_proj`` +0.82%,
  ``qkv_proj`` +0.28%, ``gate_up_proj`` +0.18%, ``o_proj`` -0.03%;
* ``down_proj`` split into its parts: int8 weights alone +0.21% unsmoothed,
  +0.36% smoothed; int8 activations alone +0.63% / +0.36%;
* a finer alpha grid (0.05) or 8x more search rows: ``down_proj`` +0.77%
  against +0.85%; GPTQ on the int8 weights after smoothing: +1.10% in all;
* float outlier channels in every projection: 8 of them +0.67%, 16 of them
  +0.48% (without the head).

Activation-aware input scales for the int8 head (AWQ's ``mean|x|^alpha``) were
tried and dropped: on calibration rows the best alpha is 0 (the int8 head's
logits are within KL 0.0012 of the float head's).

Contract::

    smoothquant(model, tokenizer, source=None, alpha=None)   # in place: smoothed, projections W8A8, head int8

The statistics come from one float forward pass (:func:`calibrate`) over
:func:`~puyu.quant.calibration.calibration_batches` (by default the
calibration split of the pre-training samples, never evaluation data).

Why not a library: SmoothQuant's reference code and llm-compressor rewrite
Hugging Face modules for CUDA kernels; the folds are a few lines on puyu's own
model, and the int8 layer is :class:`~puyu.quant.w8a8.W8A8Linear`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from puyu.quant.calibration import calibration_batches, record_inputs
from puyu.quant.w8a8 import convert_linears, fake_quantize
from puyu.quant.weight_only import Int8Linear

log = logging.getLogger(__name__)
SMOOTHED = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
CALIB_SAMPLES, CALIB_SEQLEN = 16, 256  # 4096 tokens: the per-channel maxima barely move past a few thousand
SAMPLE_ROWS = 256  # input rows kept per projection for the alpha search
OUTLIERS = 16  # input channels per projection kept in float (see the module docstring)
ALPHAS = tuple(i / 10 for i in range(11))  # the search grid, 0 to 1


@dataclass
class Calibration:
    """Per fused projection, by module path: ``ranges`` ``max |x|`` per input channel (float32 ``[in]``)
    and ``rows``, up to :data:`SAMPLE_ROWS` input rows ``[rows, in]`` spread over the calibration text;
    ``smoothed`` the ranges divided by the smoothing scales, once :func:`smooth` has folded them."""

    ranges: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    smoothed: dict[str, torch.Tensor] = field(default_factory=dict)

    def outliers(self, count: int) -> dict[str, torch.Tensor]:
        """Per projection, the ``count`` input channels with the largest smoothed range."""
        return {name: r.topk(min(count, len(r))).indices for name, r in self.smoothed.items()} if count else {}

    def add(self, name: str, x: torch.Tensor, keep: int) -> None:
        x = x.detach().float()
        peak = x.abs().amax(0)
        self.ranges[name] = torch.maximum(self.ranges[name], peak) if name in self.ranges else peak
        picked = x[torch.linspace(0, len(x) - 1, min(keep, len(x))).long()]
        self.rows[name] = torch.cat([self.rows[name], picked]) if name in self.rows else picked


@torch.inference_mode()
def calibrate(model: nn.Module, tokens: torch.Tensor, batch_size: int = 4, progress: bool = True) -> Calibration:
    """One float forward pass over ``tokens`` ``[samples, seqlen]`` recording every projection's inputs (fused model)."""
    targets = {f"model.layers.{i}.{name}": layer.get_submodule(name) for i, layer in enumerate(model.model.layers) for name in SMOOTHED}
    batches = tokens.split(batch_size)
    keep = -(-SAMPLE_ROWS // len(batches))
    calib = Calibration()
    start = time.perf_counter()
    with record_inputs(targets, lambda name, x: calib.add(name, x, keep)):
        bar = tqdm(batches, desc="SmoothQuant calibration", unit="batch", disable=not progress)
        for done, batch in enumerate(bar, 1):
            model(batch.to(model.device), output="hidden")
            bar.set_postfix(tok_s=f"{done * batch_size * tokens.shape[1] / (time.perf_counter() - start):.0f}")
    return calib


def smoothing_scales(act: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = act^alpha / weight^(1 - alpha)`` (both ``max |.|`` per channel), clamped as SmoothQuant does."""
    return (act.clamp(min=1e-5).pow(alpha) / weight.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)


def search_alpha(x: torch.Tensor, weight: torch.Tensor, act: torch.Tensor, group: tuple[int, int, int] | None = None) -> float:
    """The alpha of :data:`ALPHAS` whose smoothing gives the smallest W8A8 output error on the sample rows ``x``.

    ``group`` ``(KV, G, D)``: input channels ``(k, g, d)`` share one scale per ``(k, d)`` (o_proj under grouped-query attention).
    """
    w_max = weight.abs().amax(0)
    if group is not None:
        act, w_max = (t.view(group).amax(1) for t in (act, w_max))
    reference = x @ weight.T
    errors = []
    for alpha in ALPHAS:
        s = smoothing_scales(act, w_max, alpha)
        if group is not None:
            s = s[:, None].expand(group).reshape(-1)
        errors.append((fake_quantize(x / s) @ fake_quantize(weight * s).T - reference).pow(2).mean().item())
    return ALPHAS[errors.index(min(errors))]


def _set_weight(linear: nn.Linear, weight: torch.Tensor) -> None:
    # A new parameter, never an in-place change: the LM head may share its tensor with the embedding.
    linear.weight = nn.Parameter(weight.to(linear.weight.dtype), requires_grad=False)


def _divide_rows(linear: nn.Linear, rows: slice, s: torch.Tensor) -> None:
    weight = linear.weight.detach().float().clone()
    weight[rows] /= s[:, None]
    _set_weight(linear, weight)
    if linear.bias is not None:
        bias = linear.bias.detach().float().clone()
        bias[rows] /= s
        linear.bias = nn.Parameter(bias.to(linear.weight.dtype), requires_grad=False)


def _fold_into_norm(norm: nn.Module, linear: nn.Linear, s: torch.Tensor) -> None:
    norm.weight = nn.Parameter((norm.weight.detach().float() / s).to(norm.weight.dtype), requires_grad=False)
    _set_weight(linear, linear.weight.detach().float() * s)


@torch.no_grad()
def smooth(model: nn.Module, calib: Calibration, alpha: float | None = None, progress: bool = False) -> dict[str, float]:
    """Fold smoothing scales into ``model`` (see the module docstring); float outputs unchanged.

    ``alpha``: one migration strength for every projection, or None to search each one's (:func:`search_alpha`).
    Returns the alpha used per module path, and fills ``calib.smoothed``.
    """
    c = model.config
    h, kv, d = c.num_heads, c.num_kv_heads, c.head_dim
    chosen: dict[str, float] = {}

    def scales(name: str, linear: nn.Linear, group: tuple[int, int, int] | None = None) -> torch.Tensor:
        weight, act = linear.weight.detach().float(), calib.ranges[name]
        chosen[name] = alpha if alpha is not None else search_alpha(calib.rows[name], weight, act, group)
        w_max = weight.abs().amax(0)
        if group is not None:
            act, w_max = (t.view(group).amax(1) for t in (act, w_max))
        s = smoothing_scales(act, w_max, chosen[name])
        calib.smoothed[name] = calib.ranges[name] / (s if group is None else s[:, None].expand(group).reshape(-1))
        return s

    bar = tqdm(model.model.layers, desc="SmoothQuant alpha search" if alpha is None else "SmoothQuant", unit="layer", disable=not progress)
    for i, layer in enumerate(bar):
        attn, mlp, prefix = layer.self_attn, layer.mlp, f"model.layers.{i}."
        _fold_into_norm(layer.input_layernorm, attn.qkv_proj, scales(prefix + "self_attn.qkv_proj", attn.qkv_proj))
        _fold_into_norm(layer.post_attention_layernorm, mlp.gate_up_proj, scales(prefix + "mlp.gate_up_proj", mlp.gate_up_proj))
        # o_proj's input channel h*D + e comes from value channel (h // group)*D + e: one scale per KV head channel.
        t = scales(prefix + "self_attn.o_proj", attn.o_proj, (kv, h // kv, d))  # [KV, D]
        _divide_rows(attn.qkv_proj, slice((h + kv) * d, (h + 2 * kv) * d), t.flatten())
        _set_weight(attn.o_proj, attn.o_proj.weight.detach().float() * t[:, None].expand(kv, h // kv, d).reshape(-1))
        inner = mlp.down_proj.in_features
        s = scales(prefix + "mlp.down_proj", mlp.down_proj)
        _divide_rows(mlp.gate_up_proj, slice(inner, 2 * inner), s)
        _set_weight(mlp.down_proj, mlp.down_proj.weight.detach().float() * s)
    return chosen


def smoothquant(model: nn.Module, tokenizer, source: str | Path | None = None, alpha: float | None = None, samples: int = CALIB_SAMPLES,
                seqlen: int = CALIB_SEQLEN, kernel: str = "auto", progress: bool = True, outliers: int = OUTLIERS) -> int:
    """Calibrate, smooth and convert ``model`` in place (projections fused first; the LM head int8 weight-only).

    Args:
        source: calibration text (.jsonl/.txt); None: the default split under $PUYU_DATA_DIR/pretrain.
        alpha: migration strength for every projection, 0 (all on activations) to 1 (all on weights; the paper uses 0.5
            for Llama-size models), or None to search each projection's.
        kernel: the GEMM path of :class:`~puyu.quant.w8a8.W8A8Linear`.
        outliers: input channels per projection kept in float (0: none).

    Returns:
        the number of layers converted.

    Raises:
        ConfigError: no calibration text there, or less than ``samples x seqlen`` tokens of it.
    """
    if model.model.layers[0].self_attn.qkv_proj is None:
        model.fuse_projections()
    tokens = calibration_batches(tokenizer, source, samples, min(seqlen, model.config.max_position_embeddings))
    calib = calibrate(model, tokens, progress=progress)
    chosen = smooth(model, calib, alpha, progress)
    log.info("SmoothQuant alpha per projection: mean %.2f, range %.2f-%.2f%s", sum(chosen.values()) / len(chosen),
             min(chosen.values()), max(chosen.values()), "" if alpha is not None else " (searched)")
    converted = convert_linears(model, list(calib.ranges), kernel, calib.outliers(outliers))
    model.lm_head = Int8Linear(model.lm_head, "dequantize" if kernel == "dequantize" else "auto")
    return converted + 1

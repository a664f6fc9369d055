"""AWQ: activation-aware weight quantization (Lin et al., 2023), layer by layer on calibration data.

For each decoder layer, as AutoAWQ's ``AwqQuantizer`` and LMDeploy's ``auto_awq`` do for Llama:

1. Run the float layer on its calibration inputs and record the inputs of every linear.
2. Scale search, per group of linears that share an input: q/k/v after ``input_layernorm`` (loss: the attention
   output), gate/up after ``post_attention_layernorm`` (loss: the MLP output), down after up (loss: down's output),
   and o after v where their shapes allow (multi-head attention without grouped KV heads).  Candidates are the
   per-input-channel scales ``s = mean|x|^a / mean|w_norm|^(1-a)`` for ``a`` on a grid over [0, 1) (AutoAWQ's
   "duo scaling"; ``w_norm`` is each weight relative to its group's max), normalized to ``sqrt(max * min) = 1``, plus
   no scaling at all; each candidate quantizes ``W * s`` to nearest and the loss compares the block's output with
   the float block's on the first ``search_samples`` calibration rows.  The best ``s`` is folded in exactly:
   the preceding RMSNorm weight (or up/v output rows) divided by ``s``, the linears' input columns multiplied.
3. Clipping search for every linear except q/k (their errors pass through the softmax): per output channel and
   group, the max |w| shrunk by up to 50% in 5% steps, chosen to minimize the error of the linear's output on up to
   512 recorded input rows.
4. Quantize to nearest with integer zero points: :class:`~puyu.quant.formats.IntWeight`.

The next layer is calibrated on the float layer's outputs (as AutoAWQ does).  Written here rather than taken from
AutoAWQ: that package is archived, needs CUDA kernels to install and pins its own transformers; llm-awq is a research
script.  The search itself is short and runs on puyu's model directly.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from puyu.quant.calibration import DecoderWalk, record_inputs
from puyu.quant.formats import IntWeight, QuantSpec, fake_quantize, rtn_weight

log = logging.getLogger(__name__)
NO_CLIP = ("self_attn.q_proj", "self_attn.k_proj")
# Linears that read the same input, recorded once (by the first name).
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
SHARED_INPUTS = {"self_attn.q_proj": QKV, "self_attn.o_proj": ("self_attn.o_proj",), "mlp.gate_proj": ("mlp.gate_proj", "mlp.up_proj"),
                 "mlp.down_proj": ("mlp.down_proj",)}


def awq_quantize(model: nn.Module, tokens: torch.Tensor, spec: QuantSpec, batch_size: int = 8, search_samples: int = 16,
                 n_grid: int = 20, clip: bool = True, progress: bool = True) -> dict[str, IntWeight]:
    """AWQ on ``tokens`` ``[samples, seqlen]``; folds the scales into ``model`` and returns its int4 weights by module path.

    The model stays in float (scaled and clipped; its outputs equal the original's up to clipping): replace its
    linears with :func:`~puyu.quant.weight_only.apply_int_weights` or save it with ``save_quantized``.
    """
    walk = DecoderWalk(model, tokens, batch_size)
    weights: dict[str, IntWeight] = {}
    bar = tqdm(model.model.layers, desc="AWQ", unit="layer", disable=not progress)
    for index, layer in enumerate(bar):
        linears = walk.linears(layer)
        feats: dict[str, list[torch.Tensor]] = {}
        with record_inputs({name: linears[name] for name in SHARED_INPUTS}, lambda name, x: feats.setdefault(name, []).append(x)):
            outputs = walk.run(layer, index)
        inputs = {}
        for first, names in SHARED_INPUTS.items():
            inputs |= dict.fromkeys(names, torch.cat(feats.pop(first)))
        gains = _scale_layer(walk, layer, index, inputs, spec, search_samples, n_grid)
        for name, linear in linears.items():
            if clip and name not in NO_CLIP:
                _clip(linear, inputs[name], spec)
            weights[f"model.layers.{index}.{name}"] = rtn_weight(linear.weight, spec.group_size, spec.sym, spec.min_zero, linear.bias)
        walk.hidden = outputs
        bar.set_postfix_str("error vs RTN " + " ".join(f"{k} {v:.2f}" for k, v in gains.items()))
    return weights


def _scale_layer(walk: DecoderWalk, layer: nn.Module, index: int, inputs: dict[str, torch.Tensor], spec: QuantSpec,
                 search_samples: int, n_grid: int) -> dict[str, float]:
    """Search and fold the scales of one layer; returns each block's loss relative to round-to-nearest."""
    attn, mlp = layer.self_attn, layer.mlp
    rows = search_samples * walk.hidden.shape[1]
    shape = (-1, walk.hidden.shape[1])
    gains = {}
    attn_in, qkv = inputs["self_attn.q_proj"], [attn.q_proj, attn.k_proj, attn.v_proj]
    scales, gains["attn"] = _search(walk, lambda x, cos, sin: attn(x, cos, sin, None, index, None),
                                    attn_in[:rows].view(*shape, attn_in.shape[-1]), attn_in, qkv, spec, n_grid)
    _fold(scales, [layer.input_layernorm.weight], qkv, inputs, QKV)
    if attn.v_proj.weight.shape == attn.o_proj.weight.shape:
        o_in = inputs["self_attn.o_proj"]
        scales, gains["o"] = _search(walk, lambda x, cos, sin: attn.o_proj(x), o_in[:rows], o_in, [attn.o_proj], spec, n_grid)
        _fold(scales, _rows(attn.v_proj), [attn.o_proj], inputs, ("self_attn.o_proj",))
    mlp_in = inputs["mlp.gate_proj"]
    scales, gains["mlp"] = _search(walk, lambda x, cos, sin: mlp(x), mlp_in[:rows].view(*shape, mlp_in.shape[-1]), mlp_in,
                                   [mlp.gate_proj, mlp.up_proj], spec, n_grid)
    _fold(scales, [layer.post_attention_layernorm.weight], [mlp.gate_proj, mlp.up_proj], inputs, ("mlp.gate_proj", "mlp.up_proj"))
    down_in = inputs["mlp.down_proj"]
    scales, gains["down"] = _search(walk, lambda x, cos, sin: mlp.down_proj(x), down_in[:rows], down_in, [mlp.down_proj], spec, n_grid)
    _fold(scales, _rows(mlp.up_proj), [mlp.down_proj], inputs, ("mlp.down_proj",))
    return gains


def _rows(linear: nn.Linear) -> list[torch.Tensor]:
    """The tensors whose output channels a scale divides: the weight's rows and the bias."""
    return [linear.weight] + ([linear.bias] if linear.bias is not None else [])


@torch.no_grad()
def _search(walk: DecoderWalk, block, x: torch.Tensor, stats: torch.Tensor, linears: list[nn.Linear], spec: QuantSpec,
            n_grid: int) -> tuple[torch.Tensor | None, float]:
    """The best input-channel scales of ``linears`` (None: no scaling) and their loss relative to no scaling.

    ``block(x, cos, sin)`` is what the loss inspects, ``x`` its search inputs, ``stats`` ``[rows, in]`` all recorded inputs.
    """
    reference = walk.map(block, x)
    x_mean = stats.abs().float().mean(0)
    weight = torch.cat([m.weight for m in linears]).float()
    groups = weight.abs().view(-1, spec.group_size)
    w_mean = (groups / (groups.amax(1, keepdim=True) + 1e-6)).view(weight.shape).mean(0)
    originals = [m.weight.detach().clone() for m in linears]

    def loss(scales: torch.Tensor | None) -> float:
        for m, w in zip(linears, originals):
            scaled = w.float() * scales if scales is not None else w.float()
            q = fake_quantize(scaled, spec.group_size, spec.sym, spec.min_zero)
            m.weight.copy_(q / scales if scales is not None else q)
        return F.mse_loss(walk.map(block, x).float(), reference.float()).item()

    baseline = best_loss = loss(None)
    best = None
    for step in range(n_grid):
        ratio = step / n_grid
        scales = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
        scales = scales / (scales.max() * scales.min()).sqrt()
        scales[~torch.isfinite(scales)] = 1
        current = loss(scales)
        if current < best_loss:
            best, best_loss = scales, current
    for m, w in zip(linears, originals):
        m.weight.copy_(w)
    return best, best_loss / baseline if baseline > 0 else 1.0


@torch.no_grad()
def _fold(scales: torch.Tensor | None, previous: list[torch.Tensor], linears: list[nn.Linear], inputs: dict[str, torch.Tensor],
          names: tuple[str, ...]) -> None:
    """``previous`` (norm weight, or output rows) divided by ``scales``, the linears' input columns and recorded inputs scaled to match."""
    if scales is None:
        return
    for tensor in previous:
        tensor.div_(scales.to(tensor.dtype).view(-1, *([1] * (tensor.dim() - 1))))
    for m in linears:
        m.weight.mul_(scales.to(m.weight.dtype))
    scaled = inputs[names[0]] / scales.to(inputs[names[0]].dtype)
    for name in names:
        inputs[name] = scaled


@torch.no_grad()
def _clip(linear: nn.Linear, x: torch.Tensor, spec: QuantSpec, n_grid: int = 20, max_shrink: float = 0.5, n_tokens: int = 512,
          chunk: int = 256) -> None:
    """Clamp each (output channel, group) of ``linear``'s weight to the range that minimizes its output error on ``x``."""
    gs = spec.group_size
    x = x[:: max(1, x.shape[0] // n_tokens)][:n_tokens].float()
    w = linear.weight.float()
    out, width = w.shape
    xg = x.view(-1, width // gs, gs)  # [n, groups, gs]
    for start in range(0, out, chunk):
        wg = w[start:start + chunk].view(-1, width // gs, gs)  # [o, groups, gs]
        reference = torch.einsum("ngk,ogk->ogn", xg, wg)
        top = wg.abs().amax(-1)
        best_top, best_err = top.clone(), torch.full_like(top, float("inf"))
        for step in range(int(max_shrink * n_grid)):
            limit = top * (1 - step / n_grid)
            clipped = wg.clamp(-limit[..., None], limit[..., None]).reshape(-1, width)
            q = fake_quantize(clipped, gs, spec.sym, spec.min_zero).view_as(wg)
            err = (torch.einsum("ngk,ogk->ogn", xg, q) - reference).pow(2).mean(-1)
            better = err < best_err
            best_err, best_top = torch.where(better, err, best_err), torch.where(better, limit, best_top)
        clipped = wg.clamp(-best_top[..., None], best_top[..., None]).reshape(-1, width)
        linear.weight[start:start + chunk] = clipped.to(linear.weight.dtype)

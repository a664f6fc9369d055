"""GPTQ: Hessian-based error compensation (Frantar et al., 2022), layer by layer on calibration data.

For each decoder layer, its linears in four sequential groups (q/k/v, o, gate/up, down: "true sequential"),
each group calibrated on the inputs it sees once the groups before it are quantized (the layer runs only as far
as the group's input); linears of a group share their input, so they are solved as one stacked matrix:

1. ``H = 2 X^T W X / n`` from the recorded inputs ``X`` of the linear; dead inputs (zero diagonal) get weight 0.
   ``W`` weighs the first token of each calibration window as :data:`SINK_SHARE` of the window's tokens, the
   rest as one each: the first position becomes the attention sink that every later query reads, so an error in
   its keys and values reaches every token.  With plain ``X^T X`` (its 1 row in 512) GPTQ left the value projection's
   error at that position up to 20x round-to-nearest's, and the built-in model's held-out perplexity *worse* than
   RTN's (38.14 against 37.38, 16 x 512 calibration tokens, groups of 64) although every layer's mean output error
   was 0.3-0.8x RTN's.  Weighing it as 16, 32, 64, 128 or 512 tokens gave 34.13, 34.49, 34.18, 35.16 and 37.63;
   leaving it out, 55.7.
2. Optional act-order: columns in order of decreasing ``diag(H)``; the groups are then formed in that order and
   ``g_idx`` maps each input channel to its group (the GPTQ format stores it).
3. ``H += damp * mean(diag(H)) * I``; ``U`` = upper Cholesky factor of ``H^-1``.
4. Columns left to right: quantize column ``j`` to nearest (the group's scale and zero are fitted when the group
   starts, on the already-updated weights), then spread its error ``(w_j - q_j) / U[j, j]`` over the columns to its
   right through ``U[j, j+1:]``; inside blocks of 128 columns, with one matrix product per block for the rest
   ("lazy batch updates").

The next layer is calibrated on the *quantized* layer's outputs.  Written here rather than taken from
GPTQModel/AutoGPTQ: they pull CUDA builds and would replace this project's torch; the algorithm is a page of torch.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm import tqdm

from puyu.quant.calibration import DecoderWalk
from puyu.quant.formats import IntWeight, QuantSpec, fake_quantize, fit_groups

log = logging.getLogger(__name__)
SINK_SHARE = 1 / 16  # the first token of a calibration window weighs this share of the window's tokens in H
SEQUENTIAL = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",), ("mlp.gate_proj", "mlp.up_proj"),
              ("mlp.down_proj",))


def gptq_quantize(model: nn.Module, tokens: torch.Tensor, spec: QuantSpec, batch_size: int = 8, damp: float = 0.01,
                  block_size: int = 128, progress: bool = True) -> dict[str, IntWeight]:
    """GPTQ on ``tokens`` ``[samples, seqlen]``; returns the int4 weights by module path.

    The model's linears are left holding their dequantized weights (the next layers were calibrated on them).
    """
    walk = DecoderWalk(model, tokens, batch_size)
    seqlen = tokens.shape[1]
    row_scale = sink_row_scale(seqlen).to(model.model.embed_tokens.weight.device)
    weights: dict[str, IntWeight] = {}
    bar = tqdm(model.model.layers, desc="GPTQ", unit="layer", disable=not progress)
    for index, layer in enumerate(bar):
        gains = []
        for names in SEQUENTIAL:  # linears of one group read the same input: one Hessian, one solve for their stacked rows
            linears = walk.linears(layer, names)
            first = linears[names[0]]
            hessian = torch.zeros(first.in_features, first.in_features, device=first.weight.device)

            def accumulate(_name: str, x: torch.Tensor, hessian: torch.Tensor = hessian) -> None:
                x = x.float() * row_scale.repeat(x.shape[0] // seqlen)[:, None]
                hessian.addmm_(x.t(), x, alpha=2 / walk.tokens)

            walk.feed(layer, index, {names[0]: first}, accumulate)
            stacked = torch.cat([m.weight for m in linears.values()])
            joint = gptq_weight(stacked, hessian, spec, damp, block_size)
            gains.append(_relative_error(stacked, joint, hessian, spec))
            start = 0
            for name, linear in linears.items():
                weight = joint.rows(start, start + linear.out_features, None if linear.bias is None else linear.bias.detach().clone())
                start += linear.out_features
                with torch.no_grad():
                    linear.weight.copy_(weight.dequantize(linear.weight.dtype))
                weights[f"model.layers.{index}.{name}"] = weight
        walk.hidden = walk.run(layer, index)
        bar.set_postfix_str(f"error vs RTN {sum(gains) / len(gains):.2f}")
    return weights


def sink_row_scale(seqlen: int) -> torch.Tensor:
    """``sqrt`` of each window position's weight in the Hessian (module docstring, step 1): rows are multiplied by it."""
    scale = torch.ones(seqlen)
    scale[0] = max(1.0, SINK_SHARE * seqlen) ** 0.5
    return scale


@torch.no_grad()
def gptq_weight(w: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, damp: float = 0.01, block_size: int = 128) -> IntWeight:
    """Quantize ``w`` ``[out, in]`` given its inputs' ``hessian`` ``[in, in]`` (see the module docstring)."""
    gs = spec.group_size
    w = w.detach().float().clone()
    h = hessian.float().clone()
    out, width = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = torch.argsort(torch.diag(h), descending=True) if spec.desc_act else torch.arange(width, device=w.device)
    w, h = w[:, perm], h[perm][:, perm]
    h.diagonal().add_(damp * torch.mean(torch.diag(h)))
    # H^-1 by cholesky_solve: torch.cholesky_inverse measured 10x slower on the CPU (5.4 s against 0.35 s at 1536 inputs).
    inverse_h = torch.cholesky_solve(torch.eye(width, device=w.device), torch.linalg.cholesky(h))
    u = torch.linalg.cholesky(inverse_h, upper=True)
    # Work on W^T so that a column of W is a contiguous row: one fused rank-1 update per column.
    wt, codes = w.t().contiguous(), torch.zeros(width, out, device=w.device)
    scales, zeros = [], []
    block = gs * max(1, block_size // gs)  # blocks hold whole groups, so a group's fit sees its updated columns
    for start in range(0, width, block):
        end = min(start + block, width)
        w1, u1 = wt[start:end].clone(), u[start:end, start:end]
        errors = torch.zeros_like(w1)
        diagonal = u1.diagonal().tolist()
        for i in range(end - start):
            if i % gs == 0:
                scale, zero = fit_groups(w1[i:i + gs].t(), spec.sym, spec.min_zero)
                scales.append(scale)
                zeros.append(zero)
            column = w1[i]
            q = ((column / scale).round_() + zero).clamp_(0, 15)
            codes[start + i] = q
            err = errors[i]
            torch.sub(column, (q - zero).mul_(scale), out=err).div_(diagonal[i])
            w1[i + 1:].addr_(u1[i, i + 1:], err, alpha=-1)
        wt[end:] -= u[start:end, end:].t() @ errors
    codes = codes.t()
    inverse = torch.argsort(perm)
    g_idx = (inverse // gs).to(torch.int32)  # input channel c sits at position inverse[c] of the quantization order
    return IntWeight(codes[:, inverse].to(torch.uint8), torch.stack(scales).half(), torch.stack(zeros).to(torch.uint8), g_idx)


def _relative_error(w: torch.Tensor, weight: IntWeight, hessian: torch.Tensor, spec: QuantSpec) -> float:
    """The output error ``tr(D H D^T)`` of the GPTQ weight relative to round-to-nearest's (a progress figure)."""
    w = w.detach().float()

    def err(d: torch.Tensor) -> float:
        return torch.einsum("oi,ij,oj->", d, hessian, d).item()

    rtn = err(fake_quantize(w, spec.group_size, spec.sym, spec.min_zero) - w)
    return err(weight.dequantize() - w) / rtn if rtn > 0 else 1.0

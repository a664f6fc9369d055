"""The training objective and the per-method model set-up.

:func:`prepare_model` turns a loaded :class:`~puyu.model.Transformer` into the
model a method trains: ``full`` trains every weight; ``lora`` freezes the base
and adds adapters; ``qlora`` also stores the adapted base layers in NF4.  With
``precision: bf16`` the frozen weights are kept in bf16 (trainable ones stay
fp32 master weights, buffers stay fp32, and the forward runs under bf16 autocast).

:class:`LMObjective` computes the summed next-token cross-entropy of a batch.
It takes the final hidden states (the model's forward with ``output="hidden"``)
and applies the LM head only at positions that have a target, fused with the
cross-entropy (:class:`LinearCrossEntropy`).  SFT data trains on assistant tokens only, so
this skips part of the vocabulary projection, and the ``[B, T, vocab]`` logits
never exist in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from puyu.data.packing import IGNORE
from puyu.errors import ConfigError
from puyu.kernels import cross_entropy
from puyu.model.lora import LoraConfig, add_lora
from puyu.model.transformer import Transformer

# A chunk's rows are padded to a multiple of this: each new row count costs a bf16 product on the CPU (oneDNN) a
# freshly built kernel, 15-25 ms on 2 cores, and the last chunk of every batch had a new one.
ROW_ALIGN = 64


def prepare_model(model: Transformer, method: str, lora: LoraConfig, precision: str, connector: bool = True,
                  tower: bool = False) -> list[str]:
    """Set up ``model`` for ``method`` in place; returns the names of the trainable parameters.

    A vision-language model's parts in front of the language model (``model.image_input.vlm``) train as
    ``connector`` and ``tower`` say, fully (they are small next to the language model); lora/qlora only.
    """
    vlm = model.image_input.vlm if model.image_input is not None else None
    if vlm is not None:
        if method == "full":
            raise ConfigError("full fine-tuning of a vision-language model is not supported (its result would be saved "
                              "without the vision parts); use method: lora or qlora")
        vlm.connector.requires_grad_(connector)
        vlm.vision.requires_grad_(tower)
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return [n for n, _ in model.named_parameters()]
    add_lora(model, lora, quantize=method == "qlora")  # NF4 is quantized from the fp32 weights
    parts = [model] + ([vlm.connector, vlm.vision] if vlm is not None else [])
    if precision == "bf16":
        for p in (p for part in parts for p in part.parameters()):  # parameters only: RoPE and NF4 constants stay fp32
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if vlm is not None:
        names += [f"{part}.{n}" for part in ("connector", "vision") for n, p in getattr(vlm, part).named_parameters() if p.requires_grad]
    return names


def compile_training(objective: "LMObjective", device: torch.device) -> None:
    """``torch.compile`` the training step's hot parts in place: every decoder layer (parameter names unchanged, so
    checkpoints and adapters are too) and the LM-head loss chunk.  Regional compilation, as torchtitan does, rather
    than the whole model: the layers share one graph, so the compile costs one layer's.  Call before wrapping for
    DDP/FSDP.  Raises ConfigError when Inductor has no C++ compiler to build CPU kernels with."""
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as e:
            raise ConfigError(f"train.compile on the CPU needs a C++ compiler for Inductor ({e}); install gcc or clang, "
                              "or set train.compile=false") from e
    objective.model.attend_in_blocks = False
    for layer in objective.model.model.layers:
        layer.compile()
    objective.head_chunk = torch.compile(head_chunk)


def head_chunk_rows(hidden_size: int, itemsize: int, head_trains: bool) -> int:
    """Target positions per LM-head chunk: as many as make the chunk's fp32 log-probabilities about as large as the
    head weight in the compute dtype (``hidden_size * itemsize / 4`` rows), four times that when the head trains (each
    chunk then also adds its weight gradient into the fp32 sum); a multiple of :data:`ROW_ALIGN`, at most 1024.
    Each chunk reads the whole weight twice, so smaller chunks re-read it more often, while larger ones push their
    ``[rows, vocab]`` probabilities (written, exponentiated, cast) out of the cache.  Measured on 2 Zen 4 cores (ms per
    1024 positions, frozen head): hidden 256 / vocab 8192 fp32 80 at 1024 rows -> 71 at 256, bf16 51 -> 36 at 128;
    hidden 576 / vocab 49152 fp32 800 at 1024, 824 at 576, 981 at 128; bf16 515 -> 500 at 256."""
    rows = hidden_size * itemsize * (4 if head_trains else 1) // 4 // ROW_ALIGN * ROW_ALIGN
    return min(1024, max(ROW_ALIGN, rows))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def head_chunk(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, need_h: bool, need_w: bool, rows: int | None = None):
    """One chunk of :class:`LinearCrossEntropy`: ``(summed loss, dL/dh or None, dL/dw or None)`` for hidden ``h``
    ``[n, H]`` and weight ``w`` ``[V, H]`` in the compute dtype, targets ``t`` ``[n]``; the gradients in that dtype
    (as autocast's own backward of a linear has them), the loss fp32.  ``rows``: only the first ``rows`` rows are
    real, the rest (zeros) pad the products to an aligned shape; ``dL/dh`` then has ``rows`` rows.

    The softmax cross-entropy between the products is puyu's CPU kernel in eager mode where it runs (one pass a row,
    the gradient written over the logits), else - on other devices, and when ``torch.compile`` traces this for
    Inductor to fuse - the same in torch ops."""
    n = t.shape[0] if rows is None else rows
    grad = need_h or need_w
    logits = h @ w.t()
    if not torch.compiler.is_compiling() and cross_entropy.usable(logits):
        loss, d = cross_entropy.softmax_cross_entropy_(logits, t, n, grad).sum(), logits
    else:
        losses, d = cross_entropy.reference(logits, t, n, grad)
        loss = losses.sum()
    if not grad:
        return loss, None, None
    return loss, (d @ w)[:n] if need_h else None, d.t() @ h if need_w else None


class LinearCrossEntropy(torch.autograd.Function):
    """``sum_i CE(hidden_i W^T, target_i)`` with the gradients computed chunk by chunk in the forward.

    Written by hand because torch has no fused op for it: the ``[N, vocab]``
    logits (and their fp32 softmax) exist for one chunk at a time, and the
    gradients ``dL/dhidden = (softmax - onehot) W`` and, when the head trains,
    ``dL/dW = (softmax - onehot)^T hidden`` are formed right there (by ``chunk``:
    :func:`head_chunk`, or its compiled form), so backward only scales them - no
    logits kept for backward, no recomputation.

    Args (of ``apply``): hidden ``[N, H]``, weight ``[V, H]``, targets ``[N]`` (all valid ids), ``chunk``.
    Returns: the summed loss, fp32 scalar.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk) -> torch.Tensor:
        dtype = _compute_dtype(hidden)
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        with torch.autocast(hidden.device.type, enabled=False):
            h_all, w = hidden.to(dtype), weight.to(dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            size = head_chunk_rows(w.shape[1], w.element_size(), need_w)
            for start in range(0, h_all.shape[0], size):
                h, t = h_all[start : start + size], targets[start : start + size]
                rows, pad = h.shape[0], -h.shape[0] % ROW_ALIGN
                if pad:
                    h, t = F.pad(h, (0, 0, 0, pad)), F.pad(t, (0, pad))
                loss, gh, gw = chunk(h, w, t, need_h, need_w, rows if pad else None)
                total += loss
                if need_h:
                    grad_h[start : start + size] = gh
                if need_w:
                    grad_w += gw
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        dh = grad_h * grad.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * grad).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None


class LMObjective(nn.Module):
    """Summed cross-entropy over the target positions of a batch (the module DDP/FSDP wrap).

    For a vision-language model the vision tower and the connector are submodules too (``vision.``,
    ``connector.``: their trainable weights are saved and synchronised with the language model's), and a batch's
    pixels become the input vectors of its image tokens (:meth:`VisionLanguageModel.embed`).

    Args:
        model: the (prepared) transformer.
    """

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model
        self.head_chunk = head_chunk  # compile_training swaps in a compiled one
        if model.image_input is not None:
            self.vision, self.connector = model.image_input.vlm.vision, model.image_input.vlm.connector

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of ``-log p(target)`` over positions whose target is not ``-100``.

        Args:
            tokens: ``[B, T]`` input ids.
            targets: ``[B, T]`` next-token ids or ``-100``.
            positions: ``[B, T]`` RoPE positions.
            mask: ``[B, 1, T, T]`` bool attention mask, or None for causal rows.
            pixels: ``[tiles, 3, S, S]`` the tiles of the batch's images in the order of their tokens, or None.

        Returns:
            A scalar: the loss summed (not averaged) over trained positions.
        """
        if pixels is None:
            hidden = self.model(tokens, positions=positions, mask=mask, output="hidden")
        else:
            embeds = self.model.image_input.vlm.embed(tokens, pixels)
            hidden = self.model(inputs_embeds=embeds, positions=positions, mask=mask, output="hidden")
        keep = targets != IGNORE
        # "+ 0 * sum" keeps the graph connected when a micro-batch has no target.
        loss = LinearCrossEntropy.apply(hidden[keep], self.model.lm_head.weight, targets[keep], self.head_chunk)
        return loss + hidden.sum().float() * 0

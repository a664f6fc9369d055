"""LoRA and QLoRA layers, wrapped around the model's linear layers from outside.

A :class:`LoRALinear` replaces a projection (``q_proj``, ``gate_proj`` ...) and
computes::

    y = base(x) + (alpha / r) * B(A(dropout(x)))      A: [r, in], B: [out, r]

``base`` is the original frozen ``nn.Linear`` (LoRA) or an
:class:`~puyu.model.nf4.NF4Linear` (QLoRA).  ``A`` starts Kaiming-uniform and
``B`` at zero (as PEFT does), so training starts from the base model exactly.
Parameter names end in ``.lora_A.weight``/``.lora_B.weight`` like PEFT's, which
keeps the adapter file mapping a prefix (see :mod:`puyu.model.adapters`).
:func:`merge_lora` folds ``(alpha / r) B A`` into the base weight and puts plain
``nn.Linear`` layers back, so the merged model saves as an ordinary checkpoint.
An adapter stays unmerged when its base is quantized for inference (QLoRA-style:
merging would move the weights off the int4 grid, see :mod:`puyu.model.adapters`);
:func:`concat_lora` then keeps fused q/k/v and gate/up layers exact.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from puyu.errors import ConfigError
from puyu.model.nf4 import NF4Linear

log = logging.getLogger(__name__)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    """The ``lora`` section of a recipe (used by the lora and qlora methods).

    Attributes:
        r: rank of the update.
        alpha: scale numerator; the update is multiplied by alpha / r.
        dropout: dropout on the adapter's input.
        targets: names of the linear layers to adapt (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj).
        quant_block: QLoRA: values per NF4 absmax block.
        double_quant: QLoRA: also quantize the block maxima.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: list(PROJECTIONS))
    quant_block: int = 64
    double_quant: bool = True

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ConfigError(f"lora.r must be positive, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        unknown = sorted(set(self.targets) - set(PROJECTIONS))
        if unknown or not self.targets:
            raise ConfigError(f"lora.targets {unknown or '[]'} not valid; choose from {', '.join(PROJECTIONS)}")


class SparseDropout(nn.Dropout):
    """``nn.Dropout`` that, on a CPU and for the small ``p`` of LoRA, draws where the dropped elements are instead of
    one random number per element.

    Why not ``nn.Dropout``: PyTorch's CPU dropout draws a Bernoulli variable per element (``bernoulli_``, serial),
    3-5 ms for a 512 x 576 activation on 2 AVX2 cores, 6% of a LoRA step on the built-in model.  The gaps between
    dropped elements of an i.i.d. Bernoulli(p) mask are i.i.d. Geometric(p), so drawing ``p * n`` gaps and marking
    their running sums gives a mask of the same distribution (:func:`bernoulli_mask`).  On other devices, for ``p > 0.25`` and
    under ``torch.compile`` (whose fused dropout is fast) it is ``nn.Dropout``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or self.p > 0.25 or torch.compiler.is_compiling():
            return super().forward(x)
        return x.masked_fill(bernoulli_mask(x.shape, self.p), 0) * (1 / (1 - self.p))


def bernoulli_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A bool tensor of ``shape`` whose elements are i.i.d. True with probability ``p``, from geometric gaps.

    A gap is ``floor(log(1 - U) / log(1 - p)) + 1`` for a uniform ``U`` (inverse CDF), four times cheaper than
    ``geometric_``; float32 uniforms make it exact to ~1e-7 in probability.
    """
    n = math.prod(shape)
    batch = int(n * p + 6 * math.sqrt(n * p) + 16)  # enough gaps to pass n almost always; more are drawn when not
    scale = 1 / math.log1p(-p)

    def gaps() -> torch.Tensor:
        return torch.rand(batch).neg_().log1p_().mul_(scale).floor_().add_(1).to(torch.int64).cumsum(0)

    ends = gaps()  # 1-based positions of the True elements
    while ends[-1] <= n:
        ends = torch.cat([ends, ends[-1] + gaps()])
    mask = torch.zeros(n, dtype=torch.bool)
    mask[ends[: int(torch.searchsorted(ends, n, right=True))] - 1] = True
    return mask.view(shape)


class LoRALinear(nn.Module):
    """A frozen ``base`` layer plus a trainable low-rank update (see the module docstring)."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        device = next(base.buffers(), None)
        device = device.device if device is not None else base.weight.device
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=torch.float32)
        self.lora_dropout = SparseDropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in] -> [..., out]``."""
        # Outside autocast the fp32 adapter needs an fp32 input even when the frozen base runs in bf16.
        h = x if torch.is_autocast_enabled(x.device.type) else x.to(self.lora_A.weight.dtype)
        update = self.lora_B(self.lora_A(self.lora_dropout(h)))
        base = self.base(x)
        return base + (update * self.scaling).to(base.dtype)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A`` as ``[out, in]`` fp32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Module path -> :class:`LoRALinear` of every adapted layer."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def add_lora(model: nn.Module, config: LoraConfig, quantize: bool = False, modules: list[str] | None = None) -> list[str]:
    """Freeze ``model`` and wrap the target layers with LoRA (QLoRA when ``quantize``).

    Args:
        model: a :class:`~puyu.model.Transformer`.
        config: rank, alpha, dropout, targets and the NF4 settings.
        quantize: store the wrapped base layers as NF4 (QLoRA).
        modules: exact module paths to wrap instead of every layer named in ``config.targets``.

    Returns:
        The wrapped module paths.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if modules is None:
        modules = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in config.targets]
    for path in modules:
        base = model.get_submodule(path)
        if not isinstance(base, nn.Linear):
            raise ConfigError(f"cannot put a LoRA adapter on {path}: it is a {type(base).__name__}, not a linear layer")
        if quantize:
            base = NF4Linear(base, config.quant_block, config.double_quant)
        _replace(model, path, LoRALinear(base, config.r, config.alpha, config.dropout).train(model.training))
    log.info("LoRA r=%d on %d layers%s", config.r, len(modules), " (NF4 base)" if quantize else "")
    return modules


@torch.no_grad()
def concat_lora(layers: list[nn.Module], base: nn.Linear) -> LoRALinear:
    """One :class:`LoRALinear` over ``base`` (the plain ``layers`` side by side) whose update is each layer's own.

    ``A`` is the layers' ``A`` stacked ``[sum r, in]`` and ``B`` block-diagonal ``[sum out, sum r]`` with each
    layer's scaling folded in, so ``B A x`` is the layers' updates side by side; a layer without an adapter adds
    zero rows.
    """
    adapted = [m for m in layers if isinstance(m, LoRALinear)]
    r = sum(m.r for m in adapted)
    fused = LoRALinear(base, r, alpha=float(r))  # scaling 1: each block of B carries its own
    fused.lora_A.weight.copy_(torch.cat([m.lora_A.weight for m in adapted]))
    fused.lora_B.weight.zero_()
    row = col = 0
    for m in layers:
        if isinstance(m, LoRALinear):
            fused.lora_B.weight[row : row + m.out_features, col : col + m.r] = m.lora_B.weight * m.scaling
            col += m.r
        row += m.out_features
    return fused.train(False)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and restore plain ``nn.Linear`` layers (in place)."""
    for path, layer in lora_modules(model).items():
        base = layer.base
        if isinstance(base, NF4Linear):
            log.warning("merging into a 4-bit base: %s is dequantized first (merge onto the full-precision base for exact weights)", path)
            weight, bias = base.dequantize(), base.bias
        else:
            weight, bias = base.weight, base.bias
        merged = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
        merged.weight.copy_((weight.float() + layer.delta_weight().to(weight.device)).to(weight.dtype))
        if bias is not None:
            merged.bias.copy_(bias)
        _replace(model, path, merged)
    return model

"""Vision towers: one pre-norm ViT encoder for CLIP (LLaVA), InternViT (InternVL) and SigLIP (Idefics3/SmolVLM).

Contract::

    tower = VisionTower(config, num_layers=config.num_layers)
    features = tower(pixels [N, 3, S, S], layers=(-2,))   # -> [N, P, hidden * len(layers)]

``P`` is ``(S / patch)^2``, plus one leading CLS position for CLIP and InternViT.  ``layers`` index the hidden
states ``[embeddings, layer 1, ..., layer N]``; ``-1`` is the last layer followed by the tower's final norm where
it has one (SigLIP, InternViT without mean pooling; CLIP's ``post_layernorm`` only pools its CLS output, which no
VLM reads, so CLIP has none).  Only the first ``num_layers`` layers are built: LLaVA's features come from the
second-to-last layer, so its last layer is never computed.  CLIP and InternViT take tiles of the trained size only
(their processors always make them); SigLIP takes any multiple of the patch size, its positions bucketed as
Idefics3 does for variable resolution.

Parameter names are transformers' CLIP/SigLIP names (InternViT's are mapped in :mod:`puyu.model.vlm.loading`):
``embeddings.{patch_embedding, class_embedding, position_embedding}``, ``pre_layrnorm``, ``encoder.layers.N.{
layer_norm1, self_attn.{q,k,v,out}_proj, self_attn.{q,k}_norm, layer_norm2, mlp.fc1, mlp.fc2, lambda_1, lambda_2}``,
``post_layernorm``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from puyu.errors import ConfigError, ModelLoadError
from puyu.model.transformer import RMSNorm
from puyu.model.vlm.config import VisionConfig

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
    "gelu_new": functools.partial(F.gelu, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation a config names (transformers' ``ACT2FN`` names)."""
    if name not in ACTIVATIONS:
        raise ModelLoadError(f"config.json: activation {name!r} is not supported; puyu computes {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _norm(config: VisionConfig) -> nn.Module:
    if config.norm_type == "rms_norm":
        return RMSNorm(config.hidden_size, config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class Attention(nn.Module):
    """Bidirectional multi-head attention over all positions of a tile."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        d = config.hidden_size
        self.heads = config.num_heads
        self.q_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.out_proj = nn.Linear(d, d)
        self.qk_norm = config.qk_norm
        if config.qk_norm:  # InternViT's q/k norms keep transformers' default epsilon, not layer_norm_eps
            self.q_norm = RMSNorm(d, 1e-6)
            self.k_norm = RMSNorm(d, 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """``x + s1 * attn(norm1(x))``, then ``+ s2 * mlp(norm2(x))``; the scales ``s`` are InternViT's ``lambda_1/2``."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layer_norm1 = _norm(config)
        self.self_attn = Attention(config)
        self.layer_norm2 = _norm(config)
        self.mlp = MLP(config)
        self.layer_scale = config.layer_scale
        if config.layer_scale:
            self.lambda_1 = nn.Parameter(torch.ones(config.hidden_size))
            self.lambda_2 = nn.Parameter(torch.ones(config.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended = self.self_attn(self.layer_norm1(x))
        x = x + (self.lambda_1 * attended if self.layer_scale else attended)
        mixed = self.mlp(self.layer_norm2(x))
        return x + (self.lambda_2 * mixed if self.layer_scale else mixed)


class Embeddings(nn.Module):
    """Patch convolution, an optional CLS embedding in front, and learned absolute positions."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.patch_embedding = nn.Conv2d(3, d, kernel_size=p, stride=p, bias=config.patch_bias)
        if config.class_token:
            self.class_embedding = nn.Parameter(torch.zeros(d))
        self.position_embedding = nn.Embedding(config.grid**2 + int(config.class_token), d)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        c = self.config
        height, width = pixels.shape[-2:]
        fixed = c.kind != "siglip"
        if (fixed and (height, width) != (c.image_size, c.image_size)) or height % c.patch_size or width % c.patch_size:
            size = f"{c.image_size}x{c.image_size}" if fixed else f"a multiple of {c.patch_size}"
            raise ConfigError(f"the {c.kind} tower takes {size} pixel tiles, got {height}x{width}; "
                              "make them with the model's image processor")
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        if not fixed:
            return x + self.position_embedding(_bucketed_positions(height // c.patch_size, width // c.patch_size, c.grid, x.device))
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.position_embedding.weight


def _bucketed_positions(rows: int, cols: int, grid: int, device: torch.device) -> torch.Tensor:
    """Idefics3's position ids of a ``rows x cols`` patch grid: each patch's fractional coordinate bucketed into the
    trained ``grid x grid`` (the same float32 arithmetic, so ties fall into the same buckets)."""
    boundaries = torch.arange(1 / grid, 1.0, 1 / grid, device=device)

    def buckets(n: int) -> torch.Tensor:
        coords = torch.arange(n, device=device, dtype=torch.float32) * (1.0 / torch.tensor(n, device=device))
        return torch.bucketize(coords.clamp(max=1.0 - 1e-6), boundaries, right=True)

    return (buckets(rows)[:, None] * grid + buckets(cols)[None, :]).flatten()


class Encoder(nn.Module):
    def __init__(self, config: VisionConfig, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(num_layers))


class VisionTower(nn.Module):
    """See the module docstring."""

    def __init__(self, config: VisionConfig, num_layers: int | None = None):
        super().__init__()
        self.config = config
        self.num_layers = config.num_layers if num_layers is None else num_layers
        self.embeddings = Embeddings(config)
        if config.pre_norm:
            self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = Encoder(config, self.num_layers)
        self.has_final_norm = config.final_norm and self.num_layers == config.num_layers
        if self.has_final_norm:  # a LayerNorm also where the layers use RMSNorm (InternViT-6B)
            self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixels: torch.Tensor, layers: Sequence[int] = (-1,)) -> torch.Tensor:
        """Hidden states of ``pixels`` ``[N, 3, H, W]`` at ``layers``, concatenated: ``[N, P, hidden * len(layers)]``."""
        total = self.config.num_layers + 1
        wanted = {i % total for i in layers}
        if max(wanted) > self.num_layers:
            raise ValueError(f"layer {max(wanted)} was not built (this tower has its first {self.num_layers} layers)")
        h = self.embeddings(pixels)
        if self.config.pre_norm:
            h = self.pre_layrnorm(h)
        states = {0: h} if 0 in wanted else {}
        for i, layer in enumerate(self.encoder.layers, start=1):
            h = layer(h)
            if i in wanted:
                states[i] = h
        picked = [self.post_layernorm(states[total - 1]) if i == -1 and self.has_final_norm else states[i % total] for i in layers]
        return torch.cat(picked, dim=-1)

"""Rotary position embeddings with the scaling schemes of Llama-family checkpoints.

``RotaryEmbedding(config)(positions)`` returns ``(cos, sin)`` of shape
``[B, T, head_dim]`` for integer positions ``[B, T]``; :func:`apply_rope` rotates
queries/keys in the "rotate half" convention that Hugging Face weights use.
Scaling: ``linear`` (position interpolation), ``dynamic`` (NTK, re-based when a
position passes the trained context), ``llama3`` (Llama 3.1 frequency bands) and
``yarn`` (ramped interpolation plus attention temperature).  Frequencies are
always computed in fp32 whatever the model dtype.

:func:`llama3_scaling_from_divisors` recovers a ``llama3`` ``rope_scaling`` dict from the
per-frequency divisors that llama.cpp stores in a GGUF instead (``rope_freqs.weight``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from puyu.errors import ModelLoadError
from puyu.model.config import ModelConfig


def _base_inv_freq(base: float, dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))


def _llama3(inv_freq: torch.Tensor, p: dict) -> torch.Tensor:
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def llama3_divisors(scaling: dict, base: float, dim: int) -> torch.Tensor:
    """The per-frequency divisors (``rope_freqs.weight`` of a GGUF) of a ``llama3`` ``rope_scaling``: base
    frequencies over scaled ones (1 for short wavelengths, ``factor`` for long ones, blended between)."""
    inv = _base_inv_freq(base, dim).double()
    return (inv / _llama3(inv, scaling)).float()


def llama3_scaling_from_divisors(divisors: torch.Tensor, base: float, dim: int) -> dict | None:
    """The ``llama3`` ``rope_scaling`` whose frequencies are ``base`` frequencies divided by ``divisors``.

    llama.cpp's ``convert_hf_to_gguf`` stores Llama 3.1+ scaling as one divisor per frequency (1 for short
    wavelengths, ``factor`` for long ones, a smooth blend between).  The blend ramps linearly in
    ``original_max_position_embeddings / wavelength``, and only the two band edges (wavelengths
    ``original / high_freq_factor`` and ``original / low_freq_factor``) are determined, so the ramp is
    fitted through the divisors and expressed with an integer ``original_max_position_embeddings`` and
    ``low_freq_factor`` near 1 (as every Llama 3.x publishes them).  A dict that reproduces the divisors
    is returned (the published numbers where rounding them still does); None when every divisor is 1.

    Raises:
        ModelLoadError: no llama3 scaling gives these divisors.
    """
    inv = _base_inv_freq(base, dim).double()
    divisors = divisors.double().flatten()
    if divisors.shape != inv.shape:
        raise ModelLoadError(f"the GGUF's rope_freqs has {divisors.numel()} values but RoPE has {inv.numel()} frequencies; "
                             "the file is inconsistent")
    factor = float(divisors.max())
    if factor <= 1 + 1e-6:
        return None
    x = inv / (2 * math.pi)  # 1 / wavelength
    ramp = (1 / divisors - 1 / factor) / (1 - 1 / factor)  # 0: fully scaled, 1: unscaled, between: blended
    medium = ((ramp > 1e-6) & (ramp < 1 - 1e-6)).nonzero().flatten().tolist()
    scaled, unscaled = x[ramp <= 1e-6], x[ramp >= 1 - 1e-6]
    edge_low = float(scaled.max())
    edge_high = float(unscaled.min()) if unscaled.numel() else 2 * float(x.max())
    if len(medium) >= 2:
        first, last = medium[0], medium[-1]
        slope = float((ramp[last] - ramp[first]) / (x[last] - x[first]))
        at, value = float(x[first]), float(ramp[first])
    elif medium:  # steep enough to reach 0 and 1 before the neighbouring frequencies
        at, value = float(x[medium[0]]), float(ramp[medium[0]])
        slope = max(value / (at - edge_low), (1 - value) / (edge_high - at) if unscaled.numel() else 0.0)
    else:  # any ramp between the two groups
        at, value, slope = edge_low, 0.0, 1 / (edge_high - edge_low)
    intercept = value - slope * at
    if slope <= 0 or intercept >= 0:
        raise ModelLoadError("the GGUF's rope_freqs are not Llama 3 RoPE scaling (they do not fall from high to low "
                             "frequencies); puyu cannot run this file")
    # ramp = (original * x - low) / (high - low): the integer context nearest to low = 1, and the band edges it implies
    original = max(1, round(-slope / intercept))
    low, high = -intercept * original / slope, (1 - intercept) * original / slope
    target = (inv / divisors).float()
    published, exact = (1.0, round(high / low, 3)), (low, high)
    for low_factor, high_factor in (published, exact):
        params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low_factor, "high_freq_factor": high_factor,
                  "original_max_position_embeddings": original}
        if torch.allclose(_llama3(_base_inv_freq(base, dim), params), target, rtol=1e-5, atol=0):
            return params
    raise ModelLoadError("the GGUF's rope_freqs are not Llama 3 RoPE scaling (no factor/low/high/original context "
                         "reproduces them); puyu cannot run this file")


def _yarn(base: float, dim: int, p: dict, max_pos: int) -> tuple[torch.Tensor, float]:
    factor = p.get("factor") or max_pos / p["original_max_position_embeddings"]
    original = p["original_max_position_embeddings"]

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = p.get("attention_factor")
    if attention is None:
        m, m_all = p.get("mscale"), p.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(p.get("beta_fast") or 32), correction_dim(p.get("beta_slow") or 1)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    extrapolate = 1 - ramp
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return inv, float(attention)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for integer positions; see the module docstring for scaling."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dim = config.head_dim
        self.base = config.rope_theta
        self.max_pos = config.max_position_embeddings
        self.scaling = dict(config.rope_scaling or {"rope_type": "default"})
        self.kind = self.scaling["rope_type"]
        self.attention_scaling = 1.0
        inv = _base_inv_freq(self.base, self.dim)
        if self.kind == "linear":
            inv = inv / self.scaling["factor"]
        elif self.kind == "llama3":
            inv = _llama3(inv, self.scaling)
        elif self.kind == "yarn":
            inv, self.attention_scaling = _yarn(self.base, self.dim, self.scaling, self.max_pos)
        # A plain attribute, not a buffer: ``model.to(bfloat16)`` must not round it.
        self.inv_freq = inv

    def _dynamic_inv_freq(self, seq_len: int) -> torch.Tensor:
        if seq_len <= self.max_pos:
            return self.inv_freq
        factor = self.scaling["factor"]
        base = self.base * ((factor * seq_len / self.max_pos) - (factor - 1)) ** (self.dim / (self.dim - 2))
        return _base_inv_freq(base, self.dim)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for ``positions`` ``[B, T]`` -> ``(cos, sin)``, each ``[B, T, head_dim]`` in ``dtype``."""
        inv = self.inv_freq
        if self.kind == "dynamic":
            inv = self._dynamic_inv_freq(int(positions.max()) + 1)
        if inv.device != positions.device:
            inv = inv.to(positions.device)
            if self.kind != "dynamic":
                self.inv_freq = inv
        freqs = positions[..., None].float() * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, heads, T, D]`` by tables ``[B, T, D]``."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin

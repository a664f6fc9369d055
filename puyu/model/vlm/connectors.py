"""Connectors: vision features -> language-model input vectors.

Contract::

    connector = Connector(config)
    tokens = connector(features [N, P, vision_hidden * layers])   # -> [N, P / shuffle^2, text_hidden]

One module covers the three families (each step is off where its family has none):

- pixel shuffle by ``config.shuffle`` (InternVL's ``downsample_ratio=0.5`` and Idefics3's ``scale_factor`` are the
  same rearrangement, see :func:`pixel_shuffle`), which trades positions for width;
- ``layer_norm`` (InternVL);
- ``linear_1``, then ``act`` and ``linear_2`` where the family has a two-layer MLP (LLaVA, InternVL; Idefics3's
  single ``modality_projection.proj`` is loaded as ``linear_1``).
"""

from __future__ import annotations

import torch
from torch import nn

from puyu.model.vlm.config import VLMConfig
from puyu.model.vlm.towers import activation


def pixel_shuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Merge each ``factor x factor`` block of a square patch grid into one position.

    ``x`` ``[N, P, D]`` with ``P = g * g`` (row-major) -> ``[N, P / factor^2, D * factor^2]``: the grid is viewed
    ``[g, g/f, D f]`` (f neighbours along a row joined), transposed, joined again along the other axis and
    transposed back, exactly as transformers' ``Idefics3Connector.pixel_shuffle`` and ``InternVLModel.pixel_shuffle``.
    """
    n, positions, d = x.shape
    g = int(round(positions**0.5))
    if g * g != positions or g % factor:
        raise ValueError(f"pixel shuffle by {factor} needs a square grid divisible by it, got {positions} positions")
    x = x.reshape(n, g, g // factor, d * factor).transpose(1, 2)
    x = x.reshape(n, g // factor, g // factor, d * factor * factor).transpose(1, 2)
    return x.reshape(n, positions // factor**2, d * factor * factor)


class Connector(nn.Module):
    """See the module docstring."""

    def __init__(self, config: VLMConfig):
        super().__init__()
        self.shuffle = config.shuffle
        width = config.vision.hidden_size * len(config.feature_layers) * config.shuffle**2
        hidden = config.text.hidden_size
        self.layer_norm = nn.LayerNorm(width) if config.projector_norm else None
        self.linear_1 = nn.Linear(width, hidden, bias=config.projector_bias)
        self.act = activation(config.projector_act) if config.projector_act else None
        self.linear_2 = nn.Linear(hidden, hidden, bias=config.projector_bias) if config.projector_act else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = pixel_shuffle(features, self.shuffle) if self.shuffle > 1 else features
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        x = self.linear_1(x)
        if self.linear_2 is not None:
            x = self.linear_2(self.act(x))
        return x

"""The vision-language model: a vision tower and a connector in front of puyu's own language model.

Contract::

    vlm = VisionLanguageModel(config)                       # usually from puyu.model.vlm.load_vlm
    features = vlm.image_features(pixels [N, 3, S, S])     # -> [N, config.tokens_per_tile, text_hidden]
    embeds = vlm.embed(ids [B, T], pixels | None)           # -> [B, T, text_hidden]
    logits = vlm(ids [B, T], pixels | None, positions=None, cache=None, mask=None, logits_to_keep=0, output="logits")

``ids`` hold ``config.image_token_id`` placeholders where images go (the processors in
:mod:`puyu.model.vlm.processors` expand each image to its tiles' worth of them); ``pixels`` are every tile of
every image in the order their placeholders appear, row after row of the batch.  :meth:`embed` replaces the
placeholders' embeddings with the image features in that order (as transformers' ``masked_scatter`` does), so
an engine can prefill those vectors (``language_model(inputs_embeds=embeds, cache=...)``) and decode the
following tokens by id as for a text model.  The language model is a plain
:class:`~puyu.model.transformer.Transformer`: caches, masks, ``logits_to_keep`` and ``output`` mean what they
mean there.
"""

from __future__ import annotations

import torch
from torch import nn

from puyu.errors import ConfigError
from puyu.model.transformer import KVCache, Transformer
from puyu.model.vlm.config import VLMConfig
from puyu.model.vlm.connectors import Connector
from puyu.model.vlm.towers import VisionTower


class VisionLanguageModel(nn.Module):
    """See the module docstring."""

    def __init__(self, config: VLMConfig):
        super().__init__()
        self.config = config
        self.vision = VisionTower(config.vision, num_layers=config.layers_used)
        self.connector = Connector(config)
        self.language_model = Transformer(config.text)

    @property
    def device(self) -> torch.device:
        return self.language_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.dtype

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty cache of the language model."""
        return self.language_model.new_cache(batch_size, max_len)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Language-model input vectors of image tiles: ``[N, 3, S, S]`` -> ``[N, tokens_per_tile, text_hidden]``."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ConfigError(f"pixel tiles must be [tiles, 3, height, width], got {list(pixels.shape)}")
        features = self.vision(pixels.to(self.device, self.dtype), self.config.feature_layers)
        if self.config.drop_cls:
            features = features[:, 1:]
        return self.connector(features)

    def embed(self, ids: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings of ``ids`` ``[B, T]`` with image features in place of the placeholders: ``[B, T, hidden]``.

        Raises:
            ConfigError: the placeholders and the tiles do not match (count them with the model's processor).
        """
        embeds = self.language_model.model.embed_tokens(ids)
        slots = ids == self.config.image_token_id
        placeholders = int(slots.sum())
        tiles = 0 if pixels is None else pixels.shape[0]
        if placeholders != tiles * self.config.tokens_per_tile:
            raise ConfigError(f"the prompt has {placeholders} image placeholder tokens but {tiles} image tiles fill "
                              f"{tiles * self.config.tokens_per_tile} ({self.config.tokens_per_tile} each); "
                              "expand the prompt and make the tiles with the model's processor (expand_prompt)")
        if not tiles:
            return embeds
        features = self.image_features(pixels).to(embeds.dtype)
        return embeds.masked_scatter(slots.unsqueeze(-1), features)

    def forward(
        self,
        ids: torch.Tensor,
        pixels: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output: str = "logits",
    ) -> torch.Tensor:
        """The language model over :meth:`embed` ``(ids, pixels)``; arguments and result as in ``Transformer.forward``."""
        return self.language_model(inputs_embeds=self.embed(ids, pixels), positions=positions, cache=cache, mask=mask,
                                   logits_to_keep=logits_to_keep, output=output)

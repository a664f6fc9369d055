"""The model core: config, the Llama-family transformer, key maps and loaders.

:mod:`puyu.model.embedder` (imported only when used) loads sentence-transformers embedders for the knowledge base and
``puyu serve --embedder``.
"""

from puyu.model.config import ModelConfig
from puyu.model.hf_io import save_pretrained
from puyu.model.loader import load_model, pick_quant
from puyu.model.registry import DEFAULT_MODEL, REGISTRY
from puyu.model.transformer import KVCache, Transformer

__all__ = ["DEFAULT_MODEL", "KVCache", "ModelConfig", "REGISTRY", "Transformer", "load_model", "pick_quant", "save_pretrained"]

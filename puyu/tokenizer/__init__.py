"""Tokenizers, chat templates and the shared ``render`` (ids + assistant-only loss mask)."""

from puyu.tokenizer.stream import StreamDecoder
from puyu.tokenizer.templates import BUILTIN_TEMPLATES, ChatTemplate
from puyu.tokenizer.tokenizer import RenderedChat, Tokenizer

__all__ = ["BUILTIN_TEMPLATES", "ChatTemplate", "RenderedChat", "StreamDecoder", "Tokenizer"]

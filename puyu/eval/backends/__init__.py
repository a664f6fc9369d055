"""Model backends behind one contract (:class:`~puyu.eval.backends.base.Backend`).

``local`` (our model core, batched), ``openai`` (any OpenAI-compatible server,
e.g. ``puyu serve``) and ``hf`` (transformers, the reference).
:func:`make_backend` builds one from a model entry of a run config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from puyu.errors import ConfigError
from puyu.eval.backends.base import Backend, cut_at_stop

BACKENDS = ("local", "openai", "hf")


def model_folder(name_or_path: str | Path) -> Path:
    """The Hugging Face folder of a registered name, folder or .gguf (a GGUF is converted once)."""
    from puyu.model.loader import convert_gguf
    from puyu.model.registry import resolve

    path = resolve(name_or_path)
    return convert_gguf(path) if path.is_file() else path


def _batching(entry: dict[str, Any]) -> dict[str, Any]:
    return {"batch_size": int(entry.get("batch_size", 16)), "max_batch_tokens": int(entry.get("max_batch_tokens", 8192)),
            "max_length": entry.get("max_length")}


def make_backend(entry: dict[str, Any]) -> Backend:
    """A backend from a model entry: ``{backend, model, dtype, device, batch_size, max_batch_tokens, max_length,
    base_url, api_key, tokenizer, concurrency, quant, kv_quant}`` (``max_length`` caps the context window used, e.g. 2048
    as lm-eval; ``quant``/``kv_quant``: local only, as ``puyu serve`` takes them)."""
    kind = entry.get("backend", "local")
    if kind == "local":
        from puyu.api import LLM
        from puyu.eval.backends.local import LocalBackend

        llm = LLM(entry["model"], dtype=entry.get("dtype", "auto"), device=entry.get("device", "auto"),
                  chat_template=entry.get("chat_template"), quant=entry.get("quant", "none"))
        return LocalBackend(llm, kv_quant=entry.get("kv_quant", "none"), **_batching(entry))
    if entry.get("quant", "none") != "none" or entry.get("kv_quant", "none") != "none":
        raise ConfigError(f"quant/kv_quant apply to backend local; backend {kind} quantizes where its model runs")
    if kind == "hf":
        from puyu.eval.backends.local import HFBackend

        return HFBackend(entry["model"], dtype=entry.get("dtype", "float32"), **_batching(entry))
    if kind == "openai":
        from puyu.eval.backends.openai_api import OpenAIBackend

        return OpenAIBackend(entry["model"], entry.get("base_url", ""), tokenizer=entry.get("tokenizer") or entry["model"],
                             api_key=entry.get("api_key", "EMPTY"), max_length=entry.get("max_length"),
                             concurrency=int(entry.get("concurrency", 4)))
    raise ConfigError(f"unknown backend {kind!r}; use {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "cut_at_stop", "make_backend", "model_folder"]

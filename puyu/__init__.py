"""puyu: the open LLM chain (chat, fine-tune, quantize and serve, evaluate, agents, RAG) in one toolkit."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import puyu` stays cheap (no torch) for the CLI's --help and error paths.
    if name == "LLM":
        from puyu.api import LLM

        return LLM
    raise AttributeError(f"module 'puyu' has no attribute {name!r}")


__all__ = ["LLM", "__version__"]

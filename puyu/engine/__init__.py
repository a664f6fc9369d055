"""The serving engine: continuous batching over a paged KV cache (LMDeploy's job)."""

from puyu.engine.config import EngineConfig
from puyu.engine.engine import LLMEngine
from puyu.generation.output import StepEvent, TokenLogprob

__all__ = ["EngineConfig", "LLMEngine", "StepEvent", "TokenLogprob"]

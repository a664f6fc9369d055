"""Sampling and batched, streamed generation on the model core."""

from puyu.generation.generator import Completion, Delta, generate, stream
from puyu.generation.sampling import SamplingParams

__all__ = ["Completion", "Delta", "SamplingParams", "generate", "stream"]

"""Sampling and batched, streamed generation on the model core."""

from puyu.generation.generator import generate, stream
from puyu.generation.output import Completion, Delta
from puyu.generation.sampling import SamplingParams

__all__ = ["Completion", "Delta", "SamplingParams", "generate", "stream"]

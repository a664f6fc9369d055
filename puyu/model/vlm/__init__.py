"""Vision-language models: a vision tower and a connector in front of puyu's language model.

``load_vlm(folder)`` -> ``(VisionLanguageModel, Tokenizer, ImageProcessor)`` for LLaVA-1.5, InternVL (transformers
format) and Idefics3/SmolVLM folders; ``processor.expand(prompt, images)`` makes the pixel tiles and the prompt's
image tokens; ``model(ids, pixels)`` gives the logits and ``model.embed(ids, pixels)`` the input vectors to prefill.
"""

from puyu.model.vlm.composition import VisionLanguageModel
from puyu.model.vlm.config import VisionConfig, VLMConfig
from puyu.model.vlm.images import load_image
from puyu.model.vlm.loading import load_vlm
from puyu.model.vlm.processors import ImageProcessor, ImagePrompt, ProcessedImage

__all__ = ["ImagePrompt", "ImageProcessor", "ProcessedImage", "VLMConfig", "VisionConfig", "VisionLanguageModel", "load_image", "load_vlm"]

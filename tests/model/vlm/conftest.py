"""Tiny random vision-language models built with transformers' own classes, their processors, and photo-like images.

``make_hf_vlm(family, folder, tokenizer_dir)`` saves a LLaVA / InternVL / Idefics3 model (vision hidden 32, 2 layers;
language model hidden 64, 2 layers; 56x56 tiles of 14x14 patches) with its transformers processor into ``folder``
and returns ``(model, processor)``.  ``photo(width, height, seed)`` draws an RGB image with smooth colour fields,
shapes and noise, so resizing filters have edges and gradients to get right.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

SPECIAL = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + \
    [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                   "video_token": "<video>"}
VOCAB = 448  # the tiny tokenizer's 400 tokens plus the image tokens above
TILE = 56
IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, rms_norm_eps=1e-5, initializer_range=0.1)


def hf_tokenizer(tiny_tokenizer_dir):
    """The tiny BPE tokenizer with every family's image tokens added as special tokens."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tiny_tokenizer_dir / "tokenizer.json"), bos_token="<|endoftext|>",
                                  eos_token="<|im_end|>", extra_special_tokens=dict(INTERNVL_TOKENS))
    tok.add_special_tokens({"additional_special_tokens": SPECIAL}, replace_extra_special_tokens=False)
    assert len(tok) <= VOCAB
    return tok


def internvl_processor_class():
    """transformers' InternVLProcessor without its video processor (which needs torchvision, not installed here)."""
    from transformers import InternVLProcessor

    class ImagesOnly(InternVLProcessor):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    return ImagesOnly


def hf_config(family: str, tok, **overrides):
    """A transformers config of ``family`` over ``tok``'s ids; ``overrides`` go to the vision config (``tower_*``) or the top."""
    from transformers import Idefics3Config, InternVLConfig, LlavaConfig

    tower = {k.removeprefix("tower_"): v for k, v in overrides.items() if k.startswith("tower_")}
    vision = dict(VISION, image_size=TILE, patch_size=14) | tower
    top = {k: v for k, v in overrides.items() if not k.startswith("tower_")}
    if family == "llava":
        return LlavaConfig(vision_config=dict(model_type="clip_vision_model", **vision), text_config=dict(model_type="llama", **TEXT),
                           image_token_index=tok.convert_tokens_to_ids("<image>"), **top)
    if family == "internvl":
        vision |= {"image_size": [vision["image_size"]] * 2, "patch_size": [vision["patch_size"]] * 2}
        return InternVLConfig(vision_config=vision, text_config=dict(model_type="qwen2", **TEXT), image_token_id=tok.context_image_token_id,
                              **top)
    return Idefics3Config(vision_config=vision, text_config=dict(model_type="llama", **TEXT),
                          image_token_id=tok.convert_tokens_to_ids("<image>"), **{"scale_factor": 2} | top)


def hf_processor(family: str, tok, tokens_per_tile: int, strategy: str = "default", **settings):
    """The family's transformers processor at the tiny tile size (``settings`` override the image processor's;
    ``strategy`` is LLaVA's ``vision_feature_select_strategy``)."""
    from transformers import CLIPImageProcessorPil, Idefics3ImageProcessorPil, Idefics3Processor, LlavaImageProcessorPil, LlavaProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    if family == "llava":
        image_class = LlavaImageProcessorPil if settings.get("do_pad") else CLIPImageProcessorPil
        images = image_class(**{"size": {"shortest_edge": TILE}, "crop_size": {"height": TILE, "width": TILE}} | settings)
        return LlavaProcessor(images, tok, patch_size=14, vision_feature_select_strategy=strategy,
                              num_additional_image_tokens=1)
    if family == "internvl":
        images = GotOcr2ImageProcessorPil(**{"size": {"height": TILE, "width": TILE}, "max_patches": 6, **IMAGENET} | settings)
        return internvl_processor_class()(images, tok, image_seq_length=tokens_per_tile)
    images = Idefics3ImageProcessorPil(**{"size": {"longest_edge": 3 * TILE}, "max_image_size": {"longest_edge": TILE}} | settings)
    return Idefics3Processor(images, tok, image_seq_len=tokens_per_tile)


def make_hf_vlm(family: str, folder, tiny_tokenizer_dir, seed: int = 0, processor_settings: dict | None = None, **overrides):
    """Save a random ``family`` model and its processor in ``folder``; return ``(model fp32 eval, processor)``."""
    from transformers import Idefics3ForConditionalGeneration, InternVLForConditionalGeneration, LlavaForConditionalGeneration

    from puyu.model.vlm import VLMConfig

    tok = hf_tokenizer(tiny_tokenizer_dir)
    config = hf_config(family, tok, **overrides)
    classes = {"llava": LlavaForConditionalGeneration, "internvl": InternVLForConditionalGeneration,
               "idefics3": Idefics3ForConditionalGeneration}
    torch.manual_seed(seed)
    model = classes[family](config).eval()
    with torch.no_grad():  # non-trivial norms, biases, layer scales, CLS and positions (several are initialised to 0 or 1)
        for name, p in model.named_parameters():
            if any(k in name for k in ("norm", "bias", "lambda", "cls_token", "position_embedding", "class_embedding")):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    processor = hf_processor(family, tok, VLMConfig.from_hf(config.to_dict()).tokens_per_tile, strategy, **(processor_settings or {}))
    processor.save_pretrained(folder)
    return model, processor


def photo(width: int, height: int, seed: int = 0, mode: str = "RGB"):
    """A photo-like ``width x height`` PIL image: a smooth random colour field, a few shapes and pixel noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x0, y0, x0 + int(rng.integers(1, width // 2 + 2)), y0 + int(rng.integers(1, height // 2 + 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    noisy = np.asarray(field).astype(np.int16) + rng.integers(-12, 13, (height, width, 3))
    image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    if mode == "RGBA":
        image.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
    return image if mode in ("RGB", "RGBA") else image.convert(mode)


@pytest.fixture(scope="session")
def vlm_tokenizer(tiny_tokenizer_dir):
    return hf_tokenizer(tiny_tokenizer_dir)

"""Image preprocessing equals transformers' processors at the settings of the published models.

For photo-like images of several aspect ratios and colour modes, puyu's processor and transformers' (PIL backend)
must give the same pixel tiles (to 1e-5), hence the same number and order of tiles, and the same prompt tokens
around them (the placeholder expansion, compared as token ids).  The settings are those of llava-1.5-7b-hf,
a LlavaImageProcessor with ``do_pad``, InternVL3-1B-hf and SmolVLM-256M-Instruct (with and without image splitting).
"""

from __future__ import annotations

import pytest
import torch

from puyu.model.vlm import VLMConfig
from puyu.model.vlm.processors import build_processor
from puyu.tokenizer import Tokenizer
from tests.model.vlm.conftest import IMAGENET, hf_config, hf_processor, photo

CLIP_336 = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}
SMOLVLM = {"size": {"longest_edge": 2048}, "max_image_size": {"longest_edge": 512}, "resample": 1,
           "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
RELEASES = {  # name: (family, tower shape, image processor settings)
    "llava-1.5": ("llava", dict(tower_image_size=336), CLIP_336),
    "llava-pad-to-square": ("llava", dict(tower_image_size=336), CLIP_336 | {"do_pad": True}),
    "internvl3": ("internvl", dict(tower_image_size=448), {"size": {"height": 448, "width": 448}, "max_patches": 12, **IMAGENET}),
    "smolvlm": ("idefics3", dict(tower_image_size=512, tower_patch_size=16, scale_factor=4), SMOLVLM),
    "smolvlm-no-splitting": ("idefics3", dict(tower_image_size=512, tower_patch_size=16, scale_factor=4),
                             SMOLVLM | {"do_image_splitting": False}),
}
PLACEHOLDER = {"llava": "<image>", "internvl": "<IMG_CONTEXT>", "idefics3": "<image>"}
SIZES = [(640, 480), (480, 640), (1200, 300), (300, 1200), (448, 448), (37, 53), (1001, 999)]


@pytest.fixture(scope="module")
def tokenizer(vlm_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vlm-tokenizer")
    vlm_tokenizer.save_pretrained(folder)
    return Tokenizer.from_folder(folder)


@pytest.fixture(scope="module", params=sorted(RELEASES))
def processors(request, vlm_tokenizer):
    family, tower, settings = RELEASES[request.param]
    config = VLMConfig.from_hf(hf_config(family, vlm_tokenizer, **tower).to_dict())
    theirs = hf_processor(family, vlm_tokenizer, config.tokens_per_tile, **settings)
    tokens = {"image": PLACEHOLDER[family], "start_image": "<img>", "end_image": "</img>"}
    return family, theirs, build_processor(config, settings, tokens)


def _same(processors, tokenizer, text, images):
    family, theirs, ours = processors
    expected = theirs(text=text, images=images, return_tensors="pt")
    prompt = ours.expand(text, images)
    pixels = expected["pixel_values"].flatten(0, 1) if family == "idefics3" else expected["pixel_values"]
    assert prompt.pixels.shape == pixels.shape
    assert (prompt.pixels - pixels).abs().max().item() <= 1e-5
    assert tokenizer.encode(prompt.text) == expected["input_ids"][0].tolist()
    return prompt


@pytest.mark.parametrize("width,height", SIZES)
def test_one_image_of_each_aspect_ratio(processors, tokenizer, width, height):
    family = processors[0]
    prompt = _same(processors, tokenizer, f"USER: {PLACEHOLDER[family]}\nWhat is this? ASSISTANT:",
                   [photo(width, height, seed=width + height)])
    assert len(prompt.images) == 1


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "CMYK"])
def test_colour_modes_convert_as_transformers_does(processors, tokenizer, mode):
    """Transparency is composited onto white; palette, greyscale and CMYK convert to RGB."""
    family = processors[0]
    _same(processors, tokenizer, f"{PLACEHOLDER[family]} Describe it.", [photo(320, 240, seed=7, mode=mode)])


def test_several_images_keep_their_order(processors, tokenizer):
    family = processors[0]
    image = PLACEHOLDER[family]
    images = [photo(900, 300, seed=1), photo(200, 200, seed=2), photo(300, 700, seed=3)]
    prompt = _same(processors, tokenizer, f"USER: {image}{image} compare; and {image}? ASSISTANT:", images)
    assert torch.equal(prompt.pixels, torch.cat([p.pixels for p in prompt.images]))
    tiles = [p.pixels.shape[0] for p in prompt.images]
    if family == "llava" or not getattr(processors[2], "split", True):
        assert tiles == [1, 1, 1]
    else:  # the wide and the tall image are tiled, each tile count as transformers' (the pixels above)
        assert tiles[0] > 1 and tiles[2] > 1

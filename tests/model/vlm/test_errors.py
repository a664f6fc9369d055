"""Bad images, prompts and folders are clear errors: ConfigError for input, ModelLoadError for folders."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from puyu.errors import ConfigError, ModelLoadError
from puyu.model.vlm import load_image, load_vlm
from tests.conftest import make_hf_model
from tests.model.vlm.conftest import make_hf_vlm, photo


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def llava(tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp("llava")
    make_hf_vlm("llava", folder, tiny_tokenizer_dir)
    return load_vlm(folder, dtype="float32", device="cpu")


def test_images_load_from_paths_bytes_and_pil_images_alike(tmp_path):
    image = photo(64, 48, seed=3)
    image.save(tmp_path / "a.png")
    loaded = [load_image(tmp_path / "a.png"), load_image(str(tmp_path / "a.png")), load_image(_png(image)), load_image(image)]
    assert all(x.mode == "RGB" and np.array_equal(np.asarray(x), np.asarray(image)) for x in loaded)


def test_transparency_is_composited_onto_white():
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(load_image(clear)).tolist() == [[[255, 255, 255]] * 4] * 4


@pytest.mark.parametrize("data,match", [
    (b"definitely not an image", "not an image"),
    (_png(photo(64, 48))[:200], "damaged or truncated"),
])
def test_corrupt_bytes_are_refused(data, match):
    with pytest.raises(ConfigError, match=match):
        load_image(data)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_image(tmp_path / "nope.png")


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_modes_are_refused(mode):
    with pytest.raises(ConfigError, match=f"mode '{mode}'"):
        load_image(Image.new(mode, (8, 8)))


def test_a_too_large_image_is_refused_from_its_header(monkeypatch):
    data = _png(Image.new("RGB", (4000, 3000)))  # 12 MP, a few KB compressed
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self))
    with pytest.raises(ConfigError, match=r"4000x3000 = 12.0 megapixels, over the limit of 10"):
        load_image(data, max_pixels=10_000_000)
    assert decoded == []  # refused before any pixel was decoded


def test_the_processor_applies_the_pixel_limit(llava):
    _, _, processor = llava
    processor.max_pixels = 1000
    try:
        with pytest.raises(ConfigError, match="megapixels"):
            processor.expand("<image> hi", [photo(64, 48)])
    finally:
        from puyu.model.vlm.images import MAX_PIXELS

        processor.max_pixels = MAX_PIXELS


def test_placeholders_must_match_the_images(llava):
    model, tokenizer, processor = llava
    with pytest.raises(ConfigError, match="2 image placeholders .* but 1 images"):
        processor.expand("<image> and <image>", [photo(64, 48)])
    prompt = processor.expand("<image> what?", [photo(64, 48)])
    ids = torch.tensor([tokenizer.encode(prompt.text)])
    with pytest.raises(ConfigError, match="placeholder tokens but 2 image tiles"):
        model(ids, torch.cat([prompt.pixels, prompt.pixels]))
    with pytest.raises(ConfigError, match="56x56 pixel tiles, got 28x28"):
        model(ids, prompt.pixels[:, :, :28, :28])


def test_a_text_model_folder_is_not_a_vision_language_model(tmp_path, tiny_tokenizer_dir):
    make_hf_model(tmp_path, tiny_tokenizer_dir)
    with pytest.raises(ModelLoadError, match="LlamaForCausalLM is not a vision-language layout puyu runs"):
        load_vlm(tmp_path, dtype="float32", device="cpu")


def test_a_remote_code_internvl_folder_says_where_the_transformers_release_is(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["InternVLChatModel"], "model_type": "internvl_chat"}))
    with pytest.raises(ModelLoadError, match="InternVLChatModel is the remote-code layout.*-hf repository"):
        load_vlm(tmp_path, dtype="float32", device="cpu")


def test_weights_of_another_model_are_refused(tmp_path, tiny_tokenizer_dir):
    make_hf_vlm("llava", tmp_path, tiny_tokenizer_dir)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vision_config"]["hidden_size"] = 48
    config["vision_config"]["num_attention_heads"] = 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="vision tower tensor .* has shape"):
        load_vlm(tmp_path, dtype="float32", device="cpu")

"""puyu's vision-language models equal transformers' on tiny random LLaVA, InternVL and Idefics3 folders.

End to end, as a user runs them: the same prompt and images go through transformers' processor and model on one
side and puyu's ``load_vlm`` folder (processor, tokenizer, model) on the other.  The token ids and pixel tiles must
be equal (ids exactly, pixels to 1e-5), then the logits (fp32, 1e-4) for text only, one image, two images in two
turns, and greedy decoding token for token, puyu's through a KV cache (image vectors prefilled, tokens decoded).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from puyu.model.vlm import load_vlm
from tests.model.vlm.conftest import make_hf_vlm, photo

PLACEHOLDER = {"llava": "<image>", "internvl": "<IMG_CONTEXT>", "idefics3": "<image>"}
CASES = {
    "llava": ("llava", {}),
    "llava-pad-full-two-layers": ("llava", dict(vision_feature_select_strategy="full", vision_feature_layer=[-2, -1],
                                                processor_settings={"do_pad": True})),
    "internvl": ("internvl", dict(tie_word_embeddings=False)),  # tied (the default) in the case below
    "internvl-rmsnorm-qknorm-final-norm": ("internvl", dict(tower_norm_type="rms_norm", tower_use_qk_norm=True,
                                                            tower_use_mean_pooling=False, tower_attention_bias=True)),
    "idefics3": ("idefics3", {}),
    "idefics3-no-splitting": ("idefics3", dict(processor_settings={"do_image_splitting": False})),
}
IMAGES = [photo(200, 120, seed=1), photo(90, 260, seed=2)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _prompt(family: str, images: int) -> str:
    image = PLACEHOLDER[family]
    if images == 0:
        return "USER: What is the capital of France? ASSISTANT: Paris. USER: And of Italy? ASSISTANT:"
    if images == 1:
        return f"USER: {image}\nWhat is in this picture? ASSISTANT:"
    return f"USER: {image}\nDescribe it. ASSISTANT: A fox. USER: And this one? {image}\nCompare them. ASSISTANT:"


@pytest.fixture(scope="module", params=[(case, device) for case in sorted(CASES) for device in DEVICES], ids="-".join)
def pair(request, tmp_path_factory, tiny_tokenizer_dir):
    case, device = request.param
    family, overrides = CASES[case]
    folder = tmp_path_factory.mktemp(case)
    hf, processor = make_hf_vlm(family, folder, tiny_tokenizer_dir, **overrides)
    ours, tokenizer, ours_processor = load_vlm(folder, dtype="float32", device=device)
    return family, hf.to(device), processor, ours, tokenizer, ours_processor


def _inputs(pair, images: int):
    family, hf, processor, ours, tokenizer, ours_processor = pair
    text, pictures = _prompt(family, images), IMAGES[:images]
    theirs = processor(text=text, images=pictures or None, return_tensors="pt")
    prompt = ours_processor.expand(text, pictures)
    ids = torch.tensor([tokenizer.encode(prompt.text)])
    assert torch.equal(ids, theirs["input_ids"])
    if images:
        their_pixels = theirs["pixel_values"].flatten(0, 1) if family == "idefics3" else theirs["pixel_values"]
        assert prompt.pixels.shape == their_pixels.shape
        assert (prompt.pixels - their_pixels).abs().max().item() <= 1e-5
    else:
        assert prompt.pixels is None
    return theirs.to(ours.device), ids.to(ours.device), prompt.pixels


@pytest.mark.parametrize("images", [0, 1, 2])
def test_logits_match_transformers(pair, images):
    family, hf, _, ours, _, _ = pair
    theirs, ids, pixels = _inputs(pair, images)
    with torch.no_grad():
        ref = hf(**theirs).logits
        got = ours(ids, pixels)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-4
    if images:  # the image changes the answer: the features really went in
        with torch.no_grad():
            blank = ours(ids, torch.zeros_like(pixels))
        assert (blank - got).abs().max().item() > 1e-3


def test_greedy_decoding_through_the_cache_matches_transformers_generate(pair):
    family, hf, _, ours, _, _ = pair
    theirs, ids, pixels = _inputs(pair, 2)
    steps = 8
    hf.generation_config.eos_token_id = None  # decode all steps on both sides
    with torch.no_grad():
        expected = hf.generate(**theirs, max_new_tokens=steps, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()
        cache = ours.new_cache(1, ids.shape[1] + steps)
        embeds = ours.embed(ids, pixels)
        logits = [ours.language_model(inputs_embeds=embeds, cache=cache, logits_to_keep=1)]
        got = []
        for _ in range(steps):
            got.append(int(logits[-1][0, -1].argmax()))
            logits.append(ours.language_model(torch.tensor([[got[-1]]], device=ids.device), cache=cache))
        # the decoded steps' logits, not only their argmax (tiny random models often repeat one token)
        theirs["input_ids"] = torch.cat([ids, torch.tensor([got], device=ids.device)], dim=1)
        theirs.pop("attention_mask")
        ref = hf(**theirs).logits[:, ids.shape[1] - 1 :]
    assert got == expected
    assert (torch.cat(logits, dim=1) - ref).abs().max().item() <= 1e-4


def test_a_published_llava_folder_loads_with_its_names_and_preprocessor_config(tmp_path, tiny_tokenizer_dir):
    """Hub releases (llava-hf/llava-1.5-7b-hf) name the tower ``vision_tower.vision_model.*`` and keep the image
    settings in preprocessor_config.json; transformers 5 saves neither way, so the folder is rewritten to them."""
    hf, processor = make_hf_vlm("llava", tmp_path, tiny_tokenizer_dir)
    state = load_file(tmp_path / "model.safetensors")
    renamed = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in state.items()}
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    settings = json.loads((tmp_path / "processor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings.pop("image_processor")))
    (tmp_path / "processor_config.json").write_text(json.dumps(settings))
    ours, tokenizer, ours_processor = load_vlm(tmp_path, dtype="float32", device="cpu")
    theirs = processor(text="USER: <image>\nWhat is it?", images=[IMAGES[0]], return_tensors="pt")
    prompt = ours_processor.expand("USER: <image>\nWhat is it?", [IMAGES[0]])
    ids = torch.tensor([tokenizer.encode(prompt.text)])
    assert len(ours.vision.encoder.layers) == 1  # the last CLIP layer feeds nothing (features from layer -2)
    with torch.no_grad():
        assert (ours(ids, prompt.pixels) - hf(**theirs).logits).abs().max().item() <= 1e-4


def test_the_language_model_takes_input_vectors_in_place_of_token_ids(pair):
    ours = pair[3].language_model
    ids = torch.randint(0, 400, (2, 12), device=ours.device)
    with torch.no_grad():
        assert torch.equal(ours(inputs_embeds=ours.model.embed_tokens(ids)), ours(ids))
    with pytest.raises(ValueError, match="either tokens or inputs_embeds"):
        ours(ids, inputs_embeds=ours.model.embed_tokens(ids))

"""LoRA on a vision-language model through the one train loop: LLaVA-format data (``image`` + ``<image>`` markers),
the vision tower frozen, the connector trained, loss on the assistant's tokens only; the adapter loads back.

The data is a small synthetic caption set: coloured shapes drawn with PIL, captions naming colour and shape.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from puyu.api import LLM
from puyu.data.formats import read_samples
from puyu.data.packing import IGNORE, tokenize_samples
from puyu.errors import DatasetError
from puyu.train.config import load_recipe
from puyu.train.trainer import Trainer
from tests.model.vlm.conftest import make_hf_vlm

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def draw(colour: str, shape: str, size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    pen, box = ImageDraw.Draw(image), (12, 12, size - 12, size - 12)
    fill = COLOURS[colour]
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(size // 2, 10), (size - 10, size - 10), (10, size - 10)], fill=fill)
    return image


@pytest.fixture(scope="module")
def caption_set(tmp_path_factory):
    """A LLaVA-format caption file over images in its own folder (relative paths), one row per colour x shape."""
    root = tmp_path_factory.mktemp("shapes")
    (root / "images").mkdir()
    rows = []
    for colour in COLOURS:
        for shape in SHAPES:
            name = f"images/{colour}_{shape}.png"
            draw(colour, shape).save(root / name)
            rows.append({"image": name, "conversations": [{"from": "human", "value": "<image>\nWhat is in the picture?"},
                                                          {"from": "gpt", "value": f"A {colour} {shape}."}]})
    path = root / "captions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture(scope="module", params=["llava", "idefics3"])
def vlm_dir(request, tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp(f"vlm-{request.param}")
    make_hf_vlm(request.param, folder, tiny_tokenizer_dir, seed=2)
    return folder


def caption_loss(llm: LLM, path) -> float:
    """Mean cross-entropy of the captions (assistant tokens) given their images, with the model as loaded."""
    image_input = llm.model.image_input
    examples, _ = tokenize_samples(read_samples(path), llm.tokenizer, 512, images=image_input)
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            logits = image_input.vlm(torch.tensor([e.ids]), image_input.pixels(e.images))[0]
            targets = torch.tensor(e.targets)
            keep = targets != IGNORE
            total += float(torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


def test_lora_on_a_vision_language_model_learns_captions_and_the_adapter_loads_back(vlm_dir, caption_set, tmp_path):
    losses = []
    recipe = load_recipe("lora_sft", [
        f"model={vlm_dir}", f"data.train={caption_set}", "data.max_length=256", "data.limit=0", "chat_template=chatml",
        "train.precision=fp32", "train.batch_size=4", "train.grad_accum=1", "train.max_steps=40", "train.save_every=0",
        "optim.lr=0.01", "optim.warmup_steps=2", "lora.r=8", "lora.dropout=0", "monitor.sample_prompts=[]",
        "monitor.tensorboard=false", f"output_dir={tmp_path / 'run'}"])
    result = Trainer(recipe, hooks=[lambda step, m: losses.append(m["loss"])]).fit()
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses

    adapter = result.output
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["connector"]  # the tower stayed frozen: it is not saved
    saved = load_file(adapter / "adapter_model.safetensors")
    assert any(k.startswith("base_model.model.connector.") for k in saved)
    assert not any(".vision." in k or k.startswith("base_model.model.vision.") for k in saved)

    base = LLM(vlm_dir, dtype="float32", device="cpu", chat_template="chatml")
    tuned = LLM(vlm_dir, dtype="float32", device="cpu", chat_template="chatml", adapter=adapter)
    connector = dict(tuned.model.image_input.vlm.connector.named_parameters())
    for key, value in saved.items():
        if key.startswith("base_model.model.connector."):
            assert torch.equal(connector[key.removeprefix("base_model.model.connector.")], value)
    assert caption_loss(tuned, caption_set) < 0.5 * caption_loss(base, caption_set)


def test_llava_rows_become_image_parts_and_image_tokens_never_take_loss(vlm_dir, caption_set, tmp_path):
    llm = LLM(vlm_dir, dtype="float32", device="cpu", chat_template="chatml")
    samples = read_samples(caption_set)
    first = samples[0].messages[0]["content"]
    assert first[0]["type"] == "image" and first[0]["path"].endswith("images/red_circle.png")
    assert first[1] == {"type": "text", "text": "What is in the picture?"}
    image_input = llm.model.image_input
    examples, _ = tokenize_samples(samples[:1], llm.tokenizer, 512, images=image_input)
    ids, images = llm.prompt(samples[0].messages[:1])
    assert examples[0].ids[: len(ids)] == ids  # the training tokens of the prompt are what inference prefills
    positions = [i for i, t in enumerate(examples[0].ids) if t == image_input.image_token_id]
    assert len(positions) == images.pixels.shape[0] * image_input.processor.tokens_per_tile
    assert all(examples[0].targets[i - 1] == IGNORE and examples[0].targets[i] == IGNORE for i in positions)
    trained = llm.tokenizer.decode([t for t in examples[0].targets if t != IGNORE])
    assert "A red circle." in trained and "picture" not in trained

    short, report = tokenize_samples(samples[:1], llm.tokenizer, len(positions) // 2, images=image_input)
    assert short == [] and report.dropped  # a cut image is never trained on


def test_bad_image_rows_are_clear_errors(caption_set, tmp_path, tiny_tokenizer):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "images/nowhere.png", "conversations": [
        {"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": "ok"}]}))
    with pytest.raises(DatasetError, match="nowhere.png, which does not exist"):
        read_samples(bad)
    two = tmp_path / "two.jsonl"
    two.write_text(json.dumps({"image": [str(caption_set.parent / "images/red_circle.png")], "conversations": [
        {"from": "human", "value": "<image> and <image>?"}, {"from": "gpt", "value": "ok"}]}))
    with pytest.raises(DatasetError, match="1 images but the text has 2 <image> markers"):
        read_samples(two)
    tiny_tokenizer.set_chat_template("chatml")
    with pytest.raises(DatasetError, match="reads text only"):
        tokenize_samples(read_samples(caption_set), tiny_tokenizer, 256)

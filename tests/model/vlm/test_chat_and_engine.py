"""Vision-language models through puyu's one loading path, the chat API and the serving engine.

The reference is the model's own forward over the whole prompt at every step (no cache; its logits equal
transformers' in test_parity.py): the static generator and the paged engine must choose the same greedy tokens,
alone, batched with text and other image requests, and when a second question reuses an image's cached blocks.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch

from puyu.api import LLM
from puyu.engine import EngineConfig, LLMEngine
from puyu.errors import ConfigError, ContextLengthError
from puyu.generation import SamplingParams
from tests.model.vlm.conftest import make_hf_vlm, photo

STEPS = 6
PICTURES = [photo(120, 90, seed=3), photo(70, 150, seed=4)]


@pytest.fixture(scope="module", params=["llava", "internvl", "idefics3"])
def llm(request, tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp(request.param)
    make_hf_vlm(request.param, folder, tiny_tokenizer_dir, seed=1)
    return LLM(folder, dtype="float32", device="cpu", chat_template="chatml")  # a text template: images go in as placeholders


def _ask(image, question: str = "What is in this picture?", before: list | None = None) -> list[dict]:
    return (before or []) + [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def _reference(llm: LLM, messages: list[dict]) -> list[int]:
    """Greedy tokens from the full model run over the whole sequence at every step."""
    ids, images = llm.prompt(messages)
    vlm = llm.model.image_input.vlm
    tokens = list(ids)
    with torch.no_grad():
        for _ in range(STEPS):
            logits = vlm(torch.tensor([tokens]), images.pixels if images else None)
            tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(ids):]


GREEDY = dict(temperature=0, max_new_tokens=STEPS, ignore_eos=True)


def test_a_vision_language_folder_loads_through_load_model_and_chats_about_images(llm):
    assert llm.takes_images
    messages = _ask(PICTURES[0])
    assert llm.complete_chat(messages, **GREEDY).token_ids == _reference(llm, messages)
    two = [{"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image", "image": PICTURES[0]},
                                        {"type": "text", "text": "and"}, {"type": "image", "image": PICTURES[1]}]}]
    assert llm.complete_chat(two, **GREEDY).token_ids == _reference(llm, two)
    history = _ask(PICTURES[1], "And this one?", before=_ask(PICTURES[0]) + [{"role": "assistant", "content": "A fox."}])
    assert llm.complete_chat(history, **GREEDY).token_ids == _reference(llm, history)
    text_only = [{"role": "user", "content": "Hello there"}]
    assert llm.complete_chat(text_only, **GREEDY).token_ids == _reference(llm, text_only)


def test_the_engine_batches_image_and_text_requests_and_reuses_an_images_blocks(llm):
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(block_size=4, num_blocks=512, max_num_batched_tokens=96))
    conversations = [_ask(PICTURES[0]), [{"role": "user", "content": "Tell me a story"}], _ask(PICTURES[1]),
                     _ask(PICTURES[0], "Which colours?")]
    prompts = [llm.prompt(m) for m in conversations]
    params = SamplingParams(**GREEDY)
    results = engine.generate([ids for ids, _ in prompts], params, images=[images for _, images in prompts])
    assert [r.token_ids for r in results] == [_reference(llm, m) for m in conversations]

    hits = engine.stats()["prefix_cache_hit_blocks"]
    again = _ask(PICTURES[0], "Is it a photo?")
    ids, images = llm.prompt(again)
    expected = _reference(llm, again)
    vlm, towers = llm.model.image_input.vlm, []
    encode = vlm.image_features
    vlm.image_features = lambda pixels: towers.append(len(pixels)) or encode(pixels)
    try:  # the image's vectors are kept: its tokens past the cached blocks are prefilled without the vision tower
        assert engine.generate([ids], params, images=[images])[0].token_ids == expected
        assert not towers
    finally:
        del vlm.image_features
    reused = engine.stats()["prefix_cache_hit_blocks"] - hits
    first_image_token = int(images.positions[0])
    assert reused * 4 > first_image_token + len(images.positions) // 2  # the image's blocks came from the cache

    # The same question about other pixels shares the placeholder ids but never the image's blocks.
    other = _ask(photo(100, 80, seed=9), "Is it a photo?")
    ids, images = llm.prompt(other)
    hits = engine.stats()["prefix_cache_hit_blocks"]
    assert engine.generate([ids], params, images=[images])[0].token_ids == _reference(llm, other)
    assert (engine.stats()["prefix_cache_hit_blocks"] - hits) * 4 <= first_image_token


def test_images_arrive_as_data_urls_and_paths_and_bad_ones_are_named(llm, tmp_path):
    buffer = io.BytesIO()
    PICTURES[0].save(buffer, format="PNG")
    path = tmp_path / "photo.png"
    path.write_bytes(buffer.getvalue())
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    as_url = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Hi"}]}]
    as_path = [{"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": "Hi"}]}]
    assert llm.prompt(as_url)[0] == llm.prompt(as_path)[0]
    assert llm.prompt(as_url)[1].keys == llm.prompt(as_path)[1].keys
    remote = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
    with pytest.raises(ConfigError, match="not fetched"):
        llm.prompt(remote)
    with pytest.raises(ConfigError, match="base64"):
        llm.prompt([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ConfigError, match="broken.png"):
        llm.prompt([{"role": "user", "content": [{"type": "image", "path": str(tmp_path / "broken.png")}]}])
    with pytest.raises(ConfigError, match="not supported"):
        llm.prompt([{"role": "user", "content": [{"type": "audio", "data": "..."}]}])


PARTS_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for p in m['content'] %}{% if p['type'] == 'image' %}"
                  "<image>{% else %}{{ p['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_folders_own_template_walks_content_parts(tmp_path, tiny_tokenizer_dir):
    """VLM releases keep their template in the processor's chat_template.json and walk content parts, text-only turns too."""
    make_hf_vlm("llava", tmp_path, tiny_tokenizer_dir, seed=1)
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": PARTS_TEMPLATE}))
    llm = LLM(tmp_path, dtype="float32", device="cpu")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}] + _ask(PICTURES[0], "What is it?")
    ids, images = llm.prompt(messages)
    text = llm.tokenizer.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n<image>")
    assert text.endswith("What is it?<|im_end|>\n<|im_start|>assistant\n") and len(images.positions) == text.count("<image>")
    assert llm.complete_chat(messages, **GREEDY).token_ids == _reference(llm, messages)


def test_a_text_model_refuses_images_with_a_clear_error(tiny_model_dir):
    text_llm = LLM(tiny_model_dir, dtype="float32", device="cpu")
    assert not text_llm.takes_images
    with pytest.raises(ConfigError, match="reads text only"):
        text_llm.chat(_ask(PICTURES[0]))
    assert text_llm.prompt_ids([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]) == text_llm.prompt_ids("Hi")


def test_the_terminal_chat_attaches_images_to_the_next_message(llm, tmp_path):
    from puyu.chat.session import ChatSession
    from puyu.chat.terminal import TerminalChat
    from puyu.generation import SamplingParams

    PICTURES[0].save(tmp_path / "fox.png")
    (tmp_path / "notes.txt").write_text("not an image")
    session = ChatSession(llm, params=SamplingParams(**GREEDY))
    out, err = io.StringIO(), io.StringIO()
    chat = TerminalChat(session, out=out, err=err, interactive=False)
    chat.command(f"/image {tmp_path / 'notes.txt'}")
    assert "error" in err.getvalue() and not session.images
    chat.command(f"/image {tmp_path / 'fox.png'}")
    chat.answer("What is in this picture?")
    assert out.getvalue().strip() == llm.tokenizer.decode(_reference(llm, _ask(str(tmp_path / "fox.png")))).strip()
    assert session.turns[0]["content"][0] == {"type": "image", "path": str(tmp_path / "fox.png")} and not session.images
    chat.answer("And now?")  # a text turn after the image turn: the image stays in the history
    assert isinstance(session.turns[2]["content"], str) and len(session.turns) == 4


def test_puyu_chat_takes_an_image_for_its_question(llm, tmp_path, capsys):
    from puyu.cli import main

    PICTURES[1].save(tmp_path / "tall.png")
    folder = llm.name
    assert main(["chat", folder, "--dtype", "float32", "--chat-template", "chatml", "--image", str(tmp_path / "tall.png"),
                 "-p", "What is it?", "--temperature", "0", "--max-new-tokens", str(STEPS)]) == 0
    expected = llm.chat(_ask(PICTURES[1], "What is it?"), temperature=0, max_new_tokens=STEPS)
    assert capsys.readouterr().out.strip() == expected.strip()
    assert main(["chat", folder, "--image", str(tmp_path / "missing.png"), "-p", "Hi"]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_more_images_than_the_context_holds_is_a_clear_error(llm):
    many = [{"role": "user", "content": [{"type": "image", "image": PICTURES[0]}] * 40 + [{"type": "text", "text": "All of them?"}]}]
    with pytest.raises(ContextLengthError, match="context window is 512; shorten it"):
        llm.chat(many, max_new_tokens=2)

"""The built-in model (SmolLM2-135M-Instruct, Q4_1 GGUF): answers, template, tokenizer, and
parity with transformers reading the same GGUF; its converted folder is what transformers loads."""

from __future__ import annotations

import pytest
import torch

from puyu.model.loader import converted_folder
from puyu.model.registry import resolve
from puyu.tokenizer import StreamDecoder

pytestmark = pytest.mark.builtin
CONVERSATION = [
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_greedy_answer_names_paris(builtin_llm):
    reply = builtin_llm.chat("What is the capital of France?", temperature=0, max_new_tokens=32)
    assert "Paris" in reply


def test_chat_template_renders_exactly_as_its_jinja_template(builtin_llm):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(converted_folder(resolve("smollm2-135m-instruct")))
    for messages in (CONVERSATION, [{"role": "system", "content": "Be brief."}] + CONVERSATION):
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert builtin_llm.tokenizer.render_text(messages, add_generation_prompt=True) == expected
        assert builtin_llm.prompt_ids(messages) == hf(expected, add_special_tokens=False)["input_ids"]
    assert builtin_llm.tokenizer.decode(builtin_llm.tokenizer.stop_token_ids, skip_special_tokens=False) == "<|im_end|>"


def test_tokenizer_matches_transformers_gguf_tokenizer_and_splits_digits_like_smollm2():
    from transformers import AutoTokenizer

    from puyu.model import load_model

    path = resolve("smollm2-135m-instruct")
    hf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    _, ours = load_model("smollm2-135m-instruct", dtype="float32", device="cpu")
    for text in ["Hello, world! How are you?", "你好，世界 😀", "def f(x):\n    return x * 2\n", "<|im_start|>user\nHi<|im_end|>"]:
        assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"]
    # SmolLM2 (and llama.cpp's "smollm" pre-split) tokenizes numbers digit by digit; transformers' GGUF reader does not.
    assert [ours.decode([i]) for i in ours.encode("2024")] == ["2", "0", "2", "4"]


def test_logits_match_transformers_reading_the_same_gguf(builtin_llm):
    from transformers import AutoModelForCausalLM

    path = resolve("smollm2-135m-instruct")
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor([builtin_llm.prompt_ids(CONVERSATION)])
    with torch.no_grad():
        diff = (builtin_llm.model(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-3  # 30 fp32 layers from independently dequantized weights


def test_saved_folder_loads_in_transformers_with_the_same_logits(builtin_llm, tmp_path):
    from transformers import AutoModelForCausalLM

    builtin_llm.save(tmp_path / "saved")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32).eval()
    ids = torch.tensor([builtin_llm.prompt_ids(CONVERSATION)])
    with torch.no_grad():
        assert (builtin_llm.model(ids) - hf(ids).logits).abs().max().item() <= 1e-4
    assert hf.generation_config.eos_token_id in (2, [2])


def test_streaming_mixed_text_with_the_real_vocabulary(builtin_llm):
    text = "Streaming 流式输出中文 and emoji 🎉🦀 without garbage — ünïcödé ✓"
    ids = builtin_llm.tokenizer.encode(text)
    decoder = StreamDecoder(builtin_llm.tokenizer)
    deltas = [decoder.push(i) for i in ids]
    assert "".join(deltas) + decoder.flush() == text
    assert not any("\ufffd" in d for d in deltas)

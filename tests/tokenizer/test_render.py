"""render(): the loss mask covers exactly the assistant tokens (with the end-of-turn token) for
multi-turn and tool conversations, in every built-in template; the text equals transformers' render."""

from __future__ import annotations

import pytest

from puyu.errors import TemplateError
from puyu.tokenizer import Tokenizer

TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers.",
          "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}]
MULTI_TURN = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there!"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "Sure: 4."},
]
WITH_TOOLS = [
    {"role": "user", "content": "Add 1 and 2"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
    {"role": "tool", "content": "3"},
    {"role": "assistant", "content": "The sum is 3."},
]
CALL = {
    "chatml": '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>',
    "internlm2": '<|action_start|><|plugin|>\n{"name": "add", "parameters": {"a": 1, "b": 2}}<|action_end|>\n<|im_end|>',
    "llama3": '{"name": "add", "parameters": {"a": 1, "b": 2}}<|eot_id|>',
}
EOT = {"chatml": "<|im_end|>", "internlm2": "<|im_end|>", "llama3": "<|eot_id|>"}


def trained_runs(tokenizer: Tokenizer, rendered) -> list[str]:
    runs, current = [], []
    for token, trained in zip(rendered.ids, rendered.loss_mask):
        if trained:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r, skip_special_tokens=False) for r in runs]


@pytest.fixture(params=["chatml", "internlm2", "llama3"])
def templated(request, tiny_tokenizer_dir):
    tokenizer = Tokenizer.from_folder(tiny_tokenizer_dir)
    tokenizer.set_chat_template(request.param)
    return request.param, tokenizer


def test_mask_covers_each_assistant_reply_and_its_end_of_turn(templated):
    family, tokenizer = templated
    rendered = tokenizer.render(MULTI_TURN)
    assert trained_runs(tokenizer, rendered) == [f"Hi there!{EOT[family]}", f"Sure: 4.{EOT[family]}"]
    assert len(rendered.ids) == len(rendered.loss_mask)
    assert tokenizer.decode(rendered.ids, skip_special_tokens=False) == rendered.text


def test_tool_calls_are_trained_and_tool_results_are_not(templated):
    family, tokenizer = templated
    rendered = tokenizer.render(WITH_TOOLS, tools=TOOLS)
    assert trained_runs(tokenizer, rendered) == [CALL[family], f"The sum is 3.{EOT[family]}"]
    assert '"add"' in rendered.text and "Add two numbers." in rendered.text  # the tool schema is shown


def test_an_assistant_message_of_weight_0_is_shown_but_not_trained(templated):
    family, tokenizer = templated
    weighted = [MULTI_TURN[0], MULTI_TURN[1], {**MULTI_TURN[2], "weight": 0}, *MULTI_TURN[3:]]
    rendered = tokenizer.render(weighted)
    assert trained_runs(tokenizer, rendered) == [f"Sure: 4.{EOT[family]}"]
    assert rendered.text == tokenizer.render(MULTI_TURN).text  # the weight is not part of the text
    assert trained_runs(tokenizer, tokenizer.render([*weighted[:4], {**MULTI_TURN[4], "weight": 1}])) == [f"Sure: 4.{EOT[family]}"]
    for bad in ({**MULTI_TURN[1], "weight": 0}, {**MULTI_TURN[2], "weight": 0.5}, {**MULTI_TURN[2], "weight": True}):
        with pytest.raises(TemplateError, match="weight"):
            tokenizer.render([bad])


def test_generation_prompt_is_rendered_but_not_trained(templated):
    _, tokenizer = templated
    rendered = tokenizer.render(MULTI_TURN[:2], add_generation_prompt=True)
    assert sum(rendered.loss_mask) == 0
    assert rendered.text.rstrip().endswith(("assistant", "<|end_header_id|>"))


def test_text_equals_transformers_apply_chat_template(templated, tiny_tokenizer_dir):
    from transformers import PreTrainedTokenizerFast

    _, tokenizer = templated
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tiny_tokenizer_dir / "tokenizer.json"),
                                 bos_token="<|endoftext|>", eos_token="<|im_end|>")
    hf.chat_template = tokenizer.template.source
    for messages, tools in [(MULTI_TURN, None), (WITH_TOOLS, TOOLS)]:
        expected = hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        assert tokenizer.render_text(messages, tools, add_generation_prompt=True) == expected


def test_template_without_tool_support_falls_back_to_its_family(tiny_tokenizer_dir):
    tokenizer = Tokenizer.from_folder(tiny_tokenizer_dir)
    tokenizer.set_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    rendered = tokenizer.render(WITH_TOOLS, tools=TOOLS)
    assert "<tool_call>" in rendered.text and trained_runs(tokenizer, rendered)[0] == CALL["chatml"]


def test_errors_name_the_problem(tiny_tokenizer_dir):
    tokenizer = Tokenizer.from_folder(tiny_tokenizer_dir)
    with pytest.raises(TemplateError, match="role"):
        tokenizer.render([{"role": "wizard", "content": "x"}])
    with pytest.raises(TemplateError, match="no content"):
        tokenizer.render([{"role": "user"}])
    tokenizer.set_chat_template("{% for m in messages | reverse %}{{ m.content }}<|im_end|>{% endfor %}")
    with pytest.raises(TemplateError, match="prefix-stable"):
        tokenizer.render(MULTI_TURN)
    tokenizer.set_chat_template("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TemplateError, match="roles must alternate"):
        tokenizer.render(MULTI_TURN)
    with pytest.raises(TemplateError, match="built-in ones"):
        tokenizer.set_chat_template("vicuna")


def test_stop_tokens_come_from_the_template(templated):
    family, tokenizer = templated
    assert tokenizer.token_id(EOT[family]) in tokenizer.stop_token_ids

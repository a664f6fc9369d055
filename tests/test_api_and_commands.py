"""The Python API (LLM) and the small commands (models, convert) on a tiny model."""

from __future__ import annotations

import pytest
import torch

from puyu import LLM
from puyu.cli import main
from puyu.errors import ConfigError


def test_llm_chat_generate_and_stream_agree(tiny_llm):
    greedy = dict(temperature=0, max_new_tokens=10)
    reply = tiny_llm.chat([{"role": "user", "content": "Hello"}], **greedy)
    assert reply == tiny_llm.chat("Hello", **greedy) == "".join(tiny_llm.stream_chat("Hello", **greedy))
    completion = tiny_llm.complete_chat("Hello", **greedy)
    assert completion.text == reply and completion.finish_reason in ("stop", "length")
    texts = tiny_llm.generate(["Hello", "The quick brown fox"], **greedy)
    assert len(texts) == 2 and texts[0] == tiny_llm.generate("Hello", **greedy)[0]


def test_unknown_sampling_option_is_named(tiny_llm):
    with pytest.raises(ConfigError, match="temprature"):
        tiny_llm.chat("Hello", temprature=0)


def test_convert_writes_a_folder_that_loads_back_identically(tiny_model_dir, tmp_path, capsys):
    assert main(["convert", str(tiny_model_dir), str(tmp_path / "out"), "--dtype", "float32"]) == 0
    assert "saved" in capsys.readouterr().out
    a, b = LLM(str(tiny_model_dir), dtype="float32"), LLM(str(tmp_path / "out"), dtype="float32")
    ids = torch.randint(0, 400, (1, 8))
    with torch.no_grad():
        assert torch.equal(a.model(ids), b.model(ids))
    assert a.tokenizer.template.source == b.tokenizer.template.source


def test_models_lists_the_builtin_model(capsys):
    assert main(["models"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out


def test_everything_is_stored_under_puyu_home(tmp_path, monkeypatch):
    from puyu.home import home_subdir

    monkeypatch.setenv("PUYU_HOME", str(tmp_path / "h"))
    assert home_subdir("models") == tmp_path / "h" / "models" and (tmp_path / "h" / "models").is_dir()

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


def test_quant_at_load_serves_the_same_engine_outputs_and_refuses_to_save(tiny_model_dir, tmp_path, capsys):
    """LLM(quant=...) is what puyu chat/agent/kb ask --quant load: the same layers and greedy tokens as the engine's
    quant; a model quantized for inference is not saved as if it were float."""
    from puyu.engine import EngineConfig, LLMEngine
    from puyu.generation import SamplingParams
    from puyu.quant.weight_only import Int8Linear

    llm = LLM(str(tiny_model_dir), dtype="float32", device="cpu", quant="w8a16")
    assert isinstance(llm.model.model.layers[0].self_attn.qkv_proj, Int8Linear)
    ours = llm.complete("the quick brown fox", temperature=0, max_new_tokens=6, ignore_eos=True)[0].token_ids
    plain = LLM(str(tiny_model_dir), dtype="float32", device="cpu")
    engine = LLMEngine(plain.model, plain.tokenizer, EngineConfig(quant="w8a16", num_blocks=16))
    params = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)
    served = engine.generate([plain.tokenizer.encode("the quick brown fox")], params)
    assert served[0].token_ids == ours
    with pytest.raises(ConfigError, match="quantized at load"):
        llm.save(tmp_path / "out")
    with pytest.raises(ConfigError, match="--quant 'w3a16' is unknown"):
        LLM(str(tiny_model_dir), dtype="float32", device="cpu", quant="w3a16")
    assert main(["chat", str(tiny_model_dir), "--quant", "w4a16", "--dtype", "float32", "-p", "Hello", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()


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

"""Adapters: PEFT interop both ways, merge equals adapter-on-base, and the CLI around them."""

from __future__ import annotations

import json

import pytest
import torch

from puyu import LLM
from puyu.cli import main
from puyu.errors import ModelLoadError
from puyu.model.adapters import load_adapter, save_adapter
from puyu.model.lora import add_lora, lora_modules
from puyu.train.config import LoraConfig

TOKENS = torch.tensor([[5, 17, 99, 3, 250, 42, 7]])


def random_adapter(llm: LLM, targets=("q_proj", "v_proj", "down_proj")) -> None:
    add_lora(llm.model, LoraConfig(r=4, alpha=8, dropout=0.0, targets=list(targets)))
    torch.manual_seed(1)
    for layer in lora_modules(llm.model).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.2)


def test_our_adapter_loads_in_peft_with_the_same_logits(tiny_model_dir, tiny_llm, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        plain = tiny_llm.model(TOKENS)
    random_adapter(tiny_llm)
    with torch.no_grad():
        ours = tiny_llm.model(TOKENS)
    assert not torch.allclose(ours, plain, atol=1e-3)  # the adapter matters
    save_adapter(tiny_llm.model, tmp_path / "adapter", base_model=str(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = peft_model(TOKENS).logits
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_peft_adapter_loads_here_with_the_same_logits(tiny_model_dir, tmp_path):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, PeftLoraConfig(r=4, lora_alpha=16, target_modules=["k_proj", "o_proj", "up_proj"], lora_dropout=0.0))
    torch.manual_seed(2)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    peft_model.eval().save_pretrained(tmp_path / "peft")
    with torch.no_grad():
        theirs = peft_model(TOKENS).logits
    merged = LLM(tiny_model_dir, dtype="float32", device="cpu", adapter=tmp_path / "peft")
    unmerged = LLM(tiny_model_dir, dtype="float32", device="cpu")
    load_adapter(unmerged.model, tmp_path / "peft", merge=False)
    with torch.no_grad():
        assert torch.allclose(merged.model(TOKENS), theirs, atol=1e-4)
        assert torch.allclose(unmerged.model(TOKENS), theirs, atol=1e-4)  # merge == adapter on base


def test_merge_command_writes_a_folder_with_the_adapter_logits(tiny_model_dir, tiny_llm, tmp_path, capsys):
    random_adapter(tiny_llm)
    with torch.no_grad():
        expected = tiny_llm.model(TOKENS)
    save_adapter(tiny_llm.model, tmp_path / "adapter")
    assert main(["merge", str(tiny_model_dir), str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(hf(TOKENS).logits, expected, atol=1e-4)
    assert main(["chat", str(tiny_model_dir), "--adapter", str(tmp_path / "adapter"), "-p", "hi", "--max-new-tokens", "3",
                 "--temperature", "0", "--dtype", "float32"]) == 0


def test_adapter_for_another_model_is_refused(tiny_model_dir, tiny_llm, tmp_path, capsys):
    random_adapter(tiny_llm)
    save_adapter(tiny_llm.model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    save_file({k.replace("layers.0.", "layers.7."): v for k, v in state.items()}, tmp_path / "adapter" / "adapter_model.safetensors")
    with pytest.raises(ModelLoadError, match="layers.7"):
        LLM(tiny_model_dir, dtype="float32", device="cpu", adapter=tmp_path / "adapter")
    assert main(["merge", str(tiny_model_dir), str(tmp_path), str(tmp_path / "out")]) == 2
    assert "not a LoRA adapter folder" in capsys.readouterr().err


def test_an_unsaved_adapter_name_says_where_names_come_from(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PUYU_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "adapters" / "mine").mkdir(parents=True)

    with pytest.raises(ModelLoadError, match=r"no adapter named 'agent'.*saved: mine.*puyu agent-tune"):
        LLM(tiny_model_dir, dtype="float32", device="cpu", adapter="agent")


def test_serve_with_an_adapter_gives_the_tokens_of_chat_with_it(tiny_model_dir, tiny_llm, tmp_path, capsys):
    from openai import OpenAI

    from tests.serve.conftest import API_KEY, start_server, stop_server

    random_adapter(tiny_llm)
    save_adapter(tiny_llm.model, tmp_path / "adapter", base_model=str(tiny_model_dir))
    flags = ["--max-new-tokens", "12", "--temperature", "0", "--ignore-eos", "--dtype", "float32"]
    assert main(["chat", str(tiny_model_dir), "--adapter", str(tmp_path / "adapter"), "-p", "hi", *flags]) == 0
    chatted = capsys.readouterr().out.removesuffix("\n")
    plain = LLM(tiny_model_dir, dtype="float32", device="cpu").chat("hi", max_new_tokens=12, temperature=0, ignore_eos=True)
    assert chatted != plain  # the adapter changes the reply

    server = start_server(tiny_model_dir, "--adapter", str(tmp_path / "adapter"), log=tmp_path / "server.log")
    try:
        client = OpenAI(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=12,
                                               temperature=0, extra_body={"ignore_eos": True})
    finally:
        stop_server(server)
    assert reply.choices[0].message.content == chatted

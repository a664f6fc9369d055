"""A model's recommended sampling (generation_config.json, GGUF general.sampling.*) fills what a user leaves unset."""

from __future__ import annotations

import json
import logging

import pytest

from puyu import LLM
from puyu.cli import main
from puyu.generation.sampling import SamplingParams
from puyu.model import load_model
from puyu.serve.protocol import ChatCompletionRequest

RECOMMENDED = {"temperature": 0.3, "top_p": 0.8, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1}


def recommend(folder, **values):
    path = folder / "generation_config.json"
    generation = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**generation, "do_sample": True, **values}))


def test_generation_config_sampling_fills_what_the_caller_leaves_out(tiny_model_dir):
    recommend(tiny_model_dir, **RECOMMENDED, max_length=99)
    llm = LLM(str(tiny_model_dir), dtype="float32", device="cpu")
    assert llm.tokenizer.sampling_defaults == RECOMMENDED
    chosen = llm.sampling(temperature=0.9, max_new_tokens=7)
    assert (chosen.temperature, chosen.max_new_tokens, chosen.top_p, chosen.top_k, chosen.repetition_penalty) == (0.9, 7, 0.8, 20, 1.1)


def test_a_greedy_recommendation_makes_unset_sampling_greedy(tiny_model_dir):
    recommend(tiny_model_dir, temperature=0.0)
    llm = LLM(str(tiny_model_dir), dtype="float32", device="cpu")
    greedy = llm.chat("Hi", max_new_tokens=12, temperature=0)
    assert [llm.chat("Hi", max_new_tokens=12, seed=seed) for seed in (1, 2)] == [greedy, greedy]
    assert len({llm.chat("Hi", max_new_tokens=12, temperature=1.5, seed=seed) for seed in (1, 2, 3)}) > 1


def test_an_out_of_range_recommendation_is_left_out_with_a_warning(tiny_model_dir, caplog):
    recommend(tiny_model_dir, temperature=7.0, top_p=0.5)
    llm = LLM(str(tiny_model_dir), dtype="float32", device="cpu")
    with caplog.at_level(logging.WARNING):
        chosen = llm.sampling()
    assert chosen.temperature == SamplingParams().temperature and chosen.top_p == 0.5
    assert "temperature=7.0" in caplog.text and "must be in [0, 2]" in caplog.text


def test_saved_and_gguf_exported_folders_keep_the_recommendation(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PUYU_HOME", str(tmp_path / "home"))
    recommend(tiny_model_dir, **RECOMMENDED)
    model, tokenizer = load_model(tiny_model_dir, dtype="float32", device="cpu")
    saved = LLM(str(tiny_model_dir), dtype="float32", device="cpu").save(tmp_path / "saved")
    generation = json.loads((saved / "generation_config.json").read_text())
    assert {k: generation[k] for k in RECOMMENDED} == RECOMMENDED and generation["do_sample"] is True
    assert main(["export", str(tiny_model_dir), str(tmp_path / "tiny.gguf"), "--outtype", "f32"]) == 0
    _, back = load_model(tmp_path / "tiny.gguf", dtype="float32", device="cpu")
    assert back.sampling_defaults == pytest.approx(RECOMMENDED)


def test_a_request_takes_its_own_values_then_the_model_s_then_openai_s():
    def request(**fields):
        return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "Hi"}], **fields)

    plain = request().sampling(16, 0, {})
    assert (plain.temperature, plain.top_p, plain.top_k, plain.repetition_penalty) == (1.0, 1.0, 0, 1.0)
    recommended = request().sampling(16, 0, RECOMMENDED)
    assert {k: getattr(recommended, k) for k in RECOMMENDED} == RECOMMENDED
    own = request(temperature=0, top_k=3).sampling(16, 0, RECOMMENDED)
    assert (own.temperature, own.top_k, own.top_p) == (0, 3, 0.8)


def test_chat_command_help_says_where_unset_sampling_comes_from(capsys):
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    assert "the model's recommendation, else 0.7" in " ".join(capsys.readouterr().out.split())


def test_every_command_prints_its_help(capsys):
    """Help texts come from docstrings: a '%' in one (``+8-15%``) must not break argparse's formatting."""
    from puyu.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.choices and "serve" in a.choices).choices
    for name in commands:
        with pytest.raises(SystemExit) as exit:
            main([name, "--help"])
        assert exit.value.code == 0, name
    assert "+8-15%" in " ".join(capsys.readouterr().out.split())

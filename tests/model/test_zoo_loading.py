"""Loading zoo folders as published: InternLM v1 with a SentencePiece tokenizer.model and no chat template,
``.bin`` weights refused with a conversion command that works, the memory/speed estimate and its guard,
and ``puyu models``."""

from __future__ import annotations

import dataclasses
import io
import json
import shlex
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from puyu.cli import main
from puyu.errors import ModelLoadError
from puyu.model import ModelConfig, Transformer, load_model
from puyu.model import estimate as estimate_module
from puyu.model.estimate import estimate, kv_bytes_per_token, parameter_count
from tests.conftest import CORPUS, make_hf_model
from tests.model.test_zoo_architectures import INTERNLM2_5_7B_CHAT, INTERNLM3_8B_INSTRUCT, INTERNLM_CHAT_7B, QWEN3_0_6B

PUBLISHED = [INTERNLM_CHAT_7B, INTERNLM2_5_7B_CHAT, INTERNLM3_8B_INSTRUCT, QWEN3_0_6B]


@pytest.mark.parametrize("published", PUBLISHED, ids=["internlm-chat-7b", "internlm2_5-7b-chat", "internlm3-8b-instruct", "qwen3-0.6b"])
def test_parameter_count_is_the_models_own(published):
    config = ModelConfig.from_hf(published)
    with torch.device("meta"):
        model = Transformer(config)
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_estimate_figures_for_qwen3_0_6b():
    config = ModelConfig.from_hf(QWEN3_0_6B)
    est = estimate(config, torch.bfloat16, context=4096, bandwidth=20e9, ram=(32 * 2**30, 16 * 2**30), step_overhead=0.0)
    assert est.parameters == 596_049_920  # Qwen3-0.6B as published: 0.6 B with the tied embedding counted once
    assert est.weight_bytes == 2 * 596_049_920
    assert est.kv_bytes_per_token == kv_bytes_per_token(config, torch.bfloat16) == 2 * 28 * 8 * 128 * 2
    assert est.decode_tok_s == pytest.approx(20e9 / (2 * 596_049_920))  # tied: the embedding is streamed as the head
    assert est.fits and "fits" in est.lines()[2]
    small = estimate(config, torch.float32, bandwidth=20e9, ram=(2 * 2**30, 2**30), step_overhead=0.0)
    assert not small.fits and small.context_that_fits == 0 and "does NOT fit this machine" in small.lines()[2]
    busy = estimate(config, torch.float32, bandwidth=20e9, ram=(32 * 2**30, 2**30), step_overhead=0.0)
    assert "does NOT fit in the RAM available now" in busy.lines()[2]
    untied = estimate(ModelConfig.from_hf(INTERNLM2_5_7B_CHAT), torch.bfloat16, bandwidth=20e9, ram=(1, 1), step_overhead=0.0)
    assert untied.decode_tok_s == pytest.approx(20e9 / (2 * (untied.parameters - 92544 * 4096)))  # the input embedding is only looked up
    launched = estimate(config, torch.bfloat16, bandwidth=20e9, ram=(1, 1), step_overhead=0.02)
    assert launched.decode_tok_s == pytest.approx(1 / (2 * 596_049_920 / 20e9 + 0.02))  # reading, then launching
    assert "plus 20 ms launching" in launched.lines()[3]


def test_the_step_overhead_is_measured_on_a_miniature_of_the_same_layers():
    from puyu.model.estimate import measured_step_overhead

    config = ModelConfig.from_hf(QWEN3_0_6B)  # 28 layers with q/k norms
    deep, shallow = measured_step_overhead(config), measured_step_overhead(dataclasses.replace(config, num_layers=2))
    assert 0 < shallow < deep < 1.0  # launches grow with the layers; nothing of the real size is allocated


def test_a_model_larger_than_the_machine_is_refused_before_loading(tmp_path, tiny_tokenizer_dir, monkeypatch):
    make_hf_model(tmp_path / "m", tiny_tokenizer_dir)
    monkeypatch.setattr(estimate_module, "memory", lambda: (100_000, 50_000))
    with pytest.raises(ModelLoadError, match=r"needs 0\.0 GB for its weights in float32 .* this machine has 0\.0 GB of RAM; use a smaller"):
        load_model(tmp_path / "m", dtype="float32", device="cpu")


def test_bin_weights_are_refused_with_a_command_that_converts_them(tmp_path, tiny_tokenizer_dir):
    hf = make_hf_model(tmp_path / "m", tiny_tokenizer_dir, tie_word_embeddings=True)
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "m" / "pytorch_model.bin")  # tied: two keys share one storage
    with pytest.raises(ModelLoadError, match="does not unpickle; convert them once with: python -c") as info:
        load_model(tmp_path / "m", dtype="float32", device="cpu")
    command = str(info.value).split("convert them once with: ", 1)[1].removesuffix(")")
    argv = shlex.split(command)
    subprocess.run([sys.executable, *argv[1:]], check=True, cwd=tmp_path)
    ours, _ = load_model(tmp_path / "m", dtype="float32", device="cpu")
    ids = torch.randint(0, 400, (1, 10))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-4


def train_sentencepiece(**symbols):
    """A Llama/InternLM-style SentencePiece model trained here: ``(processor, model file bytes)``."""
    spm = pytest.importorskip("sentencepiece")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 20), model_writer=buf, vocab_size=500, character_coverage=1.0,
                                   byte_fallback=True, model_type="bpe", normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   hard_vocab_limit=False, minloglevel=2, **symbols)
    return spm.SentencePieceProcessor(model_proto=buf.getvalue()), buf.getvalue()


def use_sentencepiece(folder, model: bytes, tokenizer_config: dict) -> None:
    """Make ``folder`` ship only ``tokenizer.model`` + ``tokenizer_config.json``, as InternLM folders are published."""
    (folder / "tokenizer.json").unlink(missing_ok=True)
    (folder / "tokenizer.model").write_bytes(model)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


def test_internlm_v1_folder_as_published_loads_with_its_tokenizer_model_and_prompt(tmp_path, tiny_tokenizer_dir):
    folder = tmp_path / "internlm-chat-tiny"
    sp, spm_model = train_sentencepiece(user_defined_symbols=["<eoh>", "<eoa>", "<|User|>", "<|Bot|>", "<|System|>"])
    hf = make_hf_model(folder, tiny_tokenizer_dir, vocab_size=sp.get_piece_size(), num_key_value_heads=4, attention_bias=True)
    use_sentencepiece(folder, spm_model, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                          "tokenizer_class": "InternLMTokenizer"})
    config = json.loads((folder / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in ("attention_bias", "num_key_value_heads", "rope_theta", "rope_parameters")}
    (folder / "config.json").write_text(json.dumps(config | {"architectures": ["InternLMForCausalLM"], "model_type": "internlm",
                                                             "bias": True, "rotary": {"base": 10000, "type": "dynamic"}}))

    model, tokenizer = load_model(folder, dtype="float32", device="cpu")
    assert tokenizer.template.family == "internlm"
    assert sp.piece_to_id("<eoa>") in tokenizer.stop_token_ids and tokenizer.eos_id in tokenizer.stop_token_ids
    chat = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "1+1?"}]
    rendered = tokenizer.render(chat, add_generation_prompt=True)
    assert rendered.text == "<s><|User|>:你好<eoh>\n<|Bot|>:Hello!<eoa>\n<|User|>:1+1?<eoh>\n<|Bot|>:"
    assert rendered.ids == [sp.bos_id()] + sp.encode(rendered.text[len("<s>"):])  # one SentencePiece pass, as the published code
    trained = [i for i, m in zip(rendered.ids, rendered.loss_mask) if m]
    assert sp.decode(trained) == "Hello!<eoa>"
    ids = torch.tensor([rendered.ids])
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-4


def test_puyu_models_lists_architectures_and_estimates_a_folder(tmp_path, tiny_tokenizer_dir, capsys):
    hf = make_hf_model(tmp_path / "m", tiny_tokenizer_dir, arch="qwen3", head_dim=16, tie_word_embeddings=True)
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    for name in ("InternLMForCausalLM", "InternLM2ForCausalLM", "InternLM3ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM",
                 "smollm2-135m-instruct"):
        assert name in listing
    assert main(["models", str(tmp_path / "m"), "--dtype", "float32", "--context", "100"]) == 0
    out = capsys.readouterr().out
    params = sum(p.numel() for p in hf.parameters())
    assert f"Qwen3ForCausalLM: {params / 1e9:.2f} B parameters, {4 * params / 1e9:.2f} GB of weights in float32" in out
    assert f"KV cache: {2 * 2 * 2 * 16 * 4 / 1024:.0f} KiB per token" in out and "tok/s" in out
    assert "weights: safetensors\n  tokenizer: tokenizer.json\n  chat template: the folder's own" in out
    (tmp_path / "m" / "model.safetensors").rename(tmp_path / "m" / "pytorch_model.bin")
    (tmp_path / "m" / "tokenizer.json").unlink()
    assert main(["models", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "weights: PyTorch .bin only; convert them once with: python -c" in out
    assert "tokenizer: MISSING (no tokenizer.json or tokenizer.model)" in out


def test_internlm2_5_folder_as_published_generates_like_transformers(tmp_path, tiny_tokenizer_dir):
    """Packed wqkv weights, a SentencePiece tokenizer.model whose specials sit in its vocabulary, the published template,
    and generation_config's two stop ids: greedy tokens equal transformers' on the equivalent Llama."""
    from puyu.generation import SamplingParams, generate
    from tests.model.test_internlm2 import to_internlm2
    from tests.tokenizer.test_zoo_templates import INTERNLM2_5

    folder = tmp_path / "internlm2_5-chat-tiny"
    folder.mkdir()
    specials = ["<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>", "<|interpreter|>", "<|plugin|>"]
    sp, spm_model = train_sentencepiece(control_symbols=specials)
    hf = make_hf_model(tmp_path / "llama", tiny_tokenizer_dir, vocab_size=sp.get_piece_size(), num_attention_heads=4, num_key_value_heads=2)
    c = hf.config
    save_file(to_internlm2({k: v.clone() for k, v in hf.state_dict().items()}, 4, 2, c.head_dim), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(INTERNLM2_5_7B_CHAT | {
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": c.rms_norm_eps, "rope_scaling": None, "rope_theta": 10000.0}))
    decoder = {str(sp.piece_to_id(t)): {"content": t, "special": True, "normalized": False, "lstrip": False, "rstrip": False,
                                        "single_word": False} for t in ["<unk>", "<s>", "</s>", *specials]}
    use_sentencepiece(folder, spm_model, {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>", "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": decoder, "additional_special_tokens": specials, "chat_template": INTERNLM2_5,
        "tokenizer_class": "InternLM2Tokenizer", "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}})
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, sp.piece_to_id("<|im_end|>")]}))

    model, tokenizer = load_model(folder, dtype="float32", device="cpu")
    assert tokenizer.template.family == "internlm2" and tokenizer.stop_token_ids == [2, sp.piece_to_id("<|im_end|>")]
    chat = [{"role": "system", "content": "你是书生·浦语。"}, {"role": "user", "content": "Hello! 你好"}]
    prompt = tokenizer.render(chat, add_generation_prompt=True).ids
    pieces = ["system\n你是书生·浦语。", "\n", "user\nHello! 你好", "\n", "assistant\n"]  # between specials, one SentencePiece pass each
    im_start, im_end = sp.piece_to_id("<|im_start|>"), sp.piece_to_id("<|im_end|>")
    expected = ([1, im_start] + sp.encode(pieces[0]) + [im_end] + sp.encode(pieces[1]) + [im_start] + sp.encode(pieces[2]) + [im_end]
                + sp.encode(pieces[3]) + [im_start] + sp.encode(pieces[4]))
    assert prompt == expected
    ours = generate(model, tokenizer, [prompt], SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True))[0].token_ids
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=2)[0, len(prompt):]
    assert ours == theirs.tolist()

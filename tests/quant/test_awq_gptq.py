"""Calibrated int4 (AWQ, GPTQ, RTN): saved folders reload with the same logits in puyu and, through a reference
dequantization written here from the formats' documentation, in transformers; each decoder layer's output error on
calibration data is below round-to-nearest's at the same bits and group size.

transformers 5.x loads AWQ/GPTQ folders only through the gptqmodel package, whose install replaces this project's
torch; where gptqmodel is importable the comparison goes through ``from_pretrained`` instead.
"""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from puyu.errors import ConfigError, ModelLoadError
from puyu.model import load_model
from puyu.model.hf_io import save_quantized
from puyu.quant.calibration import DecoderWalk, calibration_batches
from puyu.quant.formats import QuantSpec
from puyu.quant.quantize import apply_weights, quantize_weights
from tests.conftest import CORPUS, make_hf_model

GROUP = 32
CASES = {"awq": ("awq", QuantSpec("awq", group_size=GROUP, quantizer="awq")),
         "gptq": ("gptq", QuantSpec("gptq", group_size=GROUP, quantizer="gptq")),
         "gptq-act-order-sym": ("gptq", QuantSpec("gptq", group_size=GROUP, sym=True, desc_act=True, quantizer="gptq")),
         "rtn-awq-format": ("rtn", QuantSpec("awq", group_size=GROUP))}


@pytest.fixture(scope="module")
def outlier_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny multi-head model (v -> o scales apply) whose norms make a few activation channels large, as in real LLMs."""
    folder = tmp_path_factory.mktemp("outliers")
    model = make_hf_model(folder, tiny_tokenizer_dir, num_key_value_heads=4)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[:3] *= 12
            layer.post_attention_layernorm.weight[5:8] *= 12
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text("\n".join(CORPUS * 12))
    return path


@pytest.fixture(scope="module")
def quantized(outlier_model_dir, calib, tmp_path_factory):
    """Per case: (float model, in-memory quantized model, saved folder, calibration tokens)."""
    out = {}
    for case, (method, spec) in CASES.items():
        model, tokenizer = load_model(outlier_model_dir, dtype="float32", device="cpu")
        float_model = copy.deepcopy(model)
        tokens = calibration_batches(tokenizer, calib, samples=8, seqlen=32)
        weights = quantize_weights(model, method, spec, tokens, progress=False)
        folder = save_quantized(model, tokenizer, tmp_path_factory.mktemp(case), spec, weights)
        out[case] = (float_model, apply_weights(model, weights, kernel="dequantize"), folder, tokens)
    return out


# ---- reference dequantization, from the formats' documentation (AutoAWQ WQLinear_GEMM, AutoGPTQ QuantLinear) ----
def _nibbles(packed: torch.Tensor, k: int) -> torch.Tensor:
    return ((packed.to(torch.int64) & 0xFFFFFFFF) >> (4 * k)) & 0xF


def awq_reference(qweight, qzeros, scales) -> torch.Tensor:
    """qweight [in, out/8]: nibble k of column c is output channel 8c + [0, 2, 4, 6, 1, 3, 5, 7][k]; w = (q - z) * s."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    q = torch.zeros(qweight.shape[0], qweight.shape[1] * 8, dtype=torch.int64)
    z = torch.zeros(qzeros.shape[0], qzeros.shape[1] * 8, dtype=torch.int64)
    for k in range(8):
        q[:, order[k]::8], z[:, order[k]::8] = _nibbles(qweight, k), _nibbles(qzeros, k)
    g = torch.arange(q.shape[0]) // (q.shape[0] // scales.shape[0])
    return ((q - z[g]) * scales.float()[g]).t()


def gptq_reference(qweight, qzeros, scales, g_idx) -> torch.Tensor:
    """qweight [in/8, out]: nibble k of row r is input channel 8r + k; qzeros stores zero - 1; w = s[g] * (q - z[g])."""
    q = torch.zeros(qweight.shape[0] * 8, qweight.shape[1], dtype=torch.int64)
    z = torch.zeros(qzeros.shape[0], qzeros.shape[1] * 8, dtype=torch.int64)
    for k in range(8):
        q[k::8], z[:, k::8] = _nibbles(qweight, k), _nibbles(qzeros, k)
    g = g_idx.long()
    return (scales.float()[g] * (q - (z + 1)[g])).t()


def transformers_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoConfig, AutoModelForCausalLM

    if importlib.util.find_spec("gptqmodel") is not None:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(ids).logits
    config = json.loads((folder / "config.json").read_text())
    qc = config.pop("quantization_config")
    state = load_file(folder / "model.safetensors")
    for prefix in [k.removesuffix(".qweight") for k in state if k.endswith(".qweight")]:
        parts = [state.pop(f"{prefix}.{name}") for name in ("qweight", "qzeros", "scales")]
        if qc["quant_method"] == "awq":
            state[f"{prefix}.weight"] = awq_reference(*parts)
        else:
            state[f"{prefix}.weight"] = gptq_reference(*parts, state.pop(f"{prefix}.g_idx"))
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32).eval()
    hf.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return hf(ids).logits


@pytest.mark.parametrize("case", list(CASES))
def test_a_saved_folder_reloads_with_the_same_logits_in_puyu_and_transformers(quantized, case):
    _, in_memory, folder, tokens = quantized[case]
    ids = tokens[:2]
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == CASES[case][1].method and config["bits"] == 4 and config["group_size"] == GROUP
    with torch.no_grad():
        expected = in_memory(ids)
        reloaded, _ = load_model(folder, dtype="float32", device="cpu", quant_kernel="dequantize")
        assert (reloaded(ids) - expected).abs().max() <= 1e-3
        assert (transformers_logits(folder, ids) - expected).abs().max() <= 1e-3
        packed, _ = load_model(folder, device="cpu")  # auto: float32 model, the CPU's int4 kernel (avx2 or packed)
        assert packed.dtype == torch.float32
        assert F.cosine_similarity(packed(ids), expected, dim=-1).min() > 0.999


def _layer_errors(float_model, quant_model, tokens) -> list[float]:
    """MSE of each quantized decoder layer's output against the float layer's, both fed the float inputs."""
    walk = DecoderWalk(float_model, tokens)
    errors = []
    for i, (reference, layer) in enumerate(zip(float_model.model.layers, quant_model.model.layers)):
        expected = walk.run(reference, i)
        errors.append(F.mse_loss(walk.run(layer, i), expected).item())
        walk.hidden = expected
    return errors


@pytest.mark.parametrize("case", ["awq", "gptq", "gptq-act-order-sym"])
def test_each_layer_errs_less_than_round_to_nearest_on_calibration_data(quantized, case):
    float_model, in_memory, _, tokens = quantized[case]
    spec = CASES[case][1]
    rtn = copy.deepcopy(float_model)
    apply_weights(rtn, quantize_weights(rtn, "rtn", spec), kernel="dequantize")
    ours, baseline = _layer_errors(float_model, in_memory, tokens), _layer_errors(float_model, rtn, tokens)
    assert all(a < b for a, b in zip(ours, baseline)), (ours, baseline)


def test_awq_folds_its_scales_into_the_norms_and_the_float_model_keeps_its_outputs(outlier_model_dir, calib):
    from puyu.quant.awq import awq_quantize

    model, tokenizer = load_model(outlier_model_dir, dtype="float32", device="cpu")
    original = copy.deepcopy(model)
    tokens = calibration_batches(tokenizer, calib, samples=8, seqlen=32)
    awq_quantize(model, tokens, CASES["awq"][1], clip=False, progress=False)
    norms = [(a.input_layernorm.weight - b.input_layernorm.weight).abs().max() for a, b in zip(model.model.layers, original.model.layers)]
    assert max(norms) > 0  # scales were chosen and folded
    with torch.no_grad():  # without clipping, scaling alone changes nothing but rounding
        assert torch.allclose(model(tokens[:2]), original(tokens[:2]), atol=1e-4)


def test_bad_input_is_refused_with_what_to_change(outlier_model_dir, calib, quantized, tmp_path):
    model, tokenizer = load_model(outlier_model_dir, dtype="float32", device="cpu")
    with pytest.raises(ConfigError, match=r"--group-size 48 does not divide the 64 inputs .* use --group-size 64 or 32"):
        quantize_weights(model, "rtn", QuantSpec("gptq", group_size=48))
    with pytest.raises(ConfigError, match=r"--calib-samples 100 .* give more text"):
        calibration_batches(tokenizer, calib, samples=100, seqlen=512)
    folder = quantized["awq"][2]
    loaded, _ = load_model(folder, dtype="float32", device="cpu")
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_weights(loaded, "awq", CASES["awq"][1], torch.zeros(1, 8, dtype=torch.long))
    from puyu.quant.weight_only import quantize_model

    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(loaded, "w4a16")
    with pytest.raises(ModelLoadError, match="adapter cannot be merged into int4 weights"):
        load_model(folder, device="cpu", adapter=tmp_path)
    with pytest.raises(ConfigError, match="AWQ format is asymmetric"):
        QuantSpec("awq", sym=True)
    odd = tmp_path / "odd"
    odd.mkdir()
    for f in folder.iterdir():
        (odd / f.name).write_bytes(f.read_bytes())
    config = json.loads((odd / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="'bitsandbytes' .* puyu loads 4-bit AWQ"):
        load_model(odd, device="cpu")


def test_puyu_quantize_writes_a_folder_that_puyu_loads_and_refuses_to_quantize_it_again(outlier_model_dir, calib, tmp_path, capsys):
    from puyu.cli import main

    out = tmp_path / "gptq"
    argv = [str(outlier_model_dir), str(out), "--method", "gptq", "--group-size", "32", "--calib", str(calib),
            "--calib-samples", "4", "--calib-seqlen", "32"]
    assert main(["quantize", *argv]) == 0
    assert "quantized 14 linear layers" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["quantization_config"]["desc_act"] is True  # act-order by default
    from puyu import LLM
    from puyu.engine import EngineConfig, LLMEngine
    from puyu.generation import SamplingParams

    llm = LLM(str(out), dtype="float32", device="cpu")  # what puyu chat/eval do
    alone = llm.complete("the quick brown fox", max_new_tokens=4, temperature=0)[0].token_ids
    assert len(alone) == 4
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_blocks=16))  # what puyu serve does
    params = SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True)
    served = engine.generate([llm.tokenizer.encode("the quick brown fox")] * 3, params)
    assert [c.token_ids for c in served] == [alone] * 3
    assert engine.blocks.num_free == 16
    assert main(["quantize", str(out), str(tmp_path / "again"), "--method", "rtn", "--group-size", "32"]) == 2
    assert "already quantized" in capsys.readouterr().err
    assert main(["chat", str(out), "--dtype", "float32", "-p", "the quick brown fox", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == llm.chat("the quick brown fox", max_new_tokens=4, temperature=0)
    assert main(["chat", str(out), "--quant", "w4a16", "-p", "hi"]) == 2  # a quantized folder takes no --quant
    err = capsys.readouterr().err
    assert "already quantized" in err and "drop --quant w4a16" in err


def test_gptq_weighs_the_first_token_of_each_window_as_a_share_of_the_window(outlier_model_dir, calib, monkeypatch):
    """The first position is the attention sink every later query reads: in GPTQ's Hessian its rows count as
    ``SINK_SHARE`` of the window, every other row as one."""
    from puyu.quant import gptq

    model, tokenizer = load_model(outlier_model_dir, dtype="float32", device="cpu")
    tokens = calibration_batches(tokenizer, calib, samples=4, seqlen=64)
    inputs = []
    DecoderWalk(model, tokens).feed(model.model.layers[0], 0, {"q": model.model.layers[0].self_attn.q_proj},
                                    lambda _n, x: inputs.append(x))
    x = torch.cat(inputs).view(4, 64, -1)
    weight = torch.ones(64)
    weight[0] = 64 * gptq.SINK_SHARE
    assert weight[0] > 1
    expected = 2 * torch.einsum("bti,t,btj->ij", x, weight, x) / x[..., 0].numel()
    seen = []
    real = gptq.gptq_weight
    monkeypatch.setattr(gptq, "gptq_weight", lambda w, h, *a: seen.append(h.clone()) or real(w, h, *a))
    gptq.gptq_quantize(model, tokens, QuantSpec("gptq", group_size=GROUP, quantizer="gptq"), progress=False)
    torch.testing.assert_close(seen[0], expected, rtol=1e-4, atol=1e-5)
    assert gptq.sink_row_scale(8)[0] == 1  # a short window: the first token never weighs less than one


def test_a_gptq_v2_folder_without_g_idx_as_other_tools_write_it_loads_with_the_same_logits(quantized, tmp_path):
    from safetensors.torch import save_file

    _, in_memory, folder, tokens = quantized["gptq"]
    state = load_file(folder / "model.safetensors")
    for key in [k for k in state if k.endswith(".g_idx")]:
        del state[key]  # optional without act-order: groups are then i // group_size
    for key in [k for k in state if k.endswith(".qzeros")]:  # v2 stores the zero itself, not zero - 1
        zeros = sum(((_nibbles(state[key], k) + 1) & 0xF) << (4 * k) for k in range(8))
        state[key] = torch.where(zeros >= 2**31, zeros - 2**32, zeros).to(torch.int32)
    other = tmp_path / "v2"
    other.mkdir()
    for f in folder.iterdir():
        if f.suffix != ".safetensors":
            (other / f.name).write_bytes(f.read_bytes())
    save_file(state, other / "model.safetensors")
    config = json.loads((other / "config.json").read_text())
    config["quantization_config"]["checkpoint_format"] = "gptq_v2"
    (other / "config.json").write_text(json.dumps(config))
    loaded, _ = load_model(other, dtype="float32", device="cpu", quant_kernel="dequantize")
    with torch.no_grad():
        assert (loaded(tokens[:2]) - in_memory(tokens[:2])).abs().max() <= 1e-3

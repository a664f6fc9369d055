"""W8A8 (SmoothQuant): the int8 GEMM is exact, the layer follows its formula and stays near the float layer,
smoothing leaves the float model's outputs unchanged and shrinks the quantization error, and the quantized
tiny model stays close to the float one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from puyu.quant.smoothquant import calibrate, search_alpha, smooth, smoothing_scales, smoothquant
from puyu.quant.w8a8 import W8A8Linear, fake_quantize, int8_gemm, quantize_rows
from puyu.quant.weight_only import Int8Linear
from tests.conftest import DATASETS, make_hf_model

CALIB = DATASETS / "pretrain/llamafactory_text/c4_demo.jsonl"


@pytest.mark.parametrize("m, k, n", [(1, 576, 1536), (7, 64, 100), (128, 1536, 576), (3, 65, 33)])
def test_the_int8_gemm_equals_the_integer_product_exactly(m, k, n):
    torch.manual_seed(m)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    out = int8_gemm(a, b)
    assert out.dtype == torch.int32 and torch.equal(out, (a.long() @ b.long().T).int())
    extreme = torch.full((2, k), -128, dtype=torch.int8)  # the largest sums a row can reach
    assert torch.equal(int8_gemm(extreme, extreme), torch.full((2, 2), 128 * 128 * k, dtype=torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_layer_computes_its_formula_and_stays_near_the_float_layer(dtype):
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=True).to(dtype)
    x = torch.randn(3, 5, 256, dtype=dtype)
    layer = W8A8Linear(linear)
    assert layer.kernel == "int_mm" and layer.qweight.dtype == torch.int8
    y = layer(x)
    assert y.dtype == dtype and y.shape == (3, 5, 96)
    # The module docstring's formula, from integer codes computed here.
    w = linear.weight.float()
    sw = w.abs().amax(1) / 127
    qw = (w / sw[:, None]).round()
    flat = x.float().reshape(-1, 256)
    sx = flat.abs().amax(1, keepdim=True) / 127
    qx = (flat / sx).round()
    expected = ((qx @ qw.T) * sx * sw + linear.bias.float()).reshape(3, 5, 96)
    tolerance = 1e-4 if dtype == torch.float32 else 0.05  # bf16: the output's own rounding (and of x's codes)
    assert (y.float() - expected).abs().max() <= tolerance * expected.abs().max()
    reference = W8A8Linear(linear, kernel="dequantize")(x)
    assert (y.float() - reference.float()).abs().max() <= tolerance * expected.abs().max()
    exact = nn.functional.linear(x.float(), w, linear.bias.float())
    assert ((y.float() - exact).norm() / exact.norm()).item() < 0.02  # measured 0.007


def test_smoothing_moves_outliers_into_the_weights_and_shrinks_the_int8_error():
    torch.manual_seed(0)
    x = torch.randn(512, 256)
    x[:, :4] *= 60  # outlier channels, as LLM activations have
    weight = torch.randn(128, 256) * 0.05
    act = x.abs().amax(0)
    reference = x @ weight.T

    def error(s: torch.Tensor) -> float:
        return ((fake_quantize(x / s) @ fake_quantize(weight * s).T - reference).norm() / reference.norm()).item()

    plain, smoothed = error(torch.ones(256)), error(smoothing_scales(act, weight.abs().amax(0), 0.5))
    assert smoothed < plain / 2  # measured 0.0067 against 0.029
    best = search_alpha(x, weight, act)
    assert error(smoothing_scales(act, weight.abs().amax(0), best)) <= smoothed + 1e-6
    q, scale = quantize_rows(x)
    assert q.abs().max() == 127 and torch.equal(scale[:, 0], x.abs().amax(1) / 127)


@pytest.fixture
def qwen_tiny(tmp_path, tiny_tokenizer_dir):
    """A tiny Qwen2 (q/k/v biases; 4 query heads over 2 KV heads) with outlier channels in the first norm."""
    from puyu import LLM

    make_hf_model(tmp_path / "qwen", tiny_tokenizer_dir, arch="qwen2")
    llm = LLM(str(tmp_path / "qwen"), dtype="float32", device="cpu")
    with torch.no_grad():
        for layer in llm.model.model.layers:
            layer.input_layernorm.weight[:3] *= 30
    return llm


def test_folding_the_smoothing_scales_leaves_the_float_model_unchanged(qwen_tiny):
    model = qwen_tiny.model
    model.fuse_projections()
    tokens = torch.randint(0, 400, (4, 48))
    calib = calibrate(model, tokens, progress=False)
    before = model(tokens)
    norms = model.model.layers[0].input_layernorm.weight.clone()
    chosen = smooth(model, calib, alpha=0.5)
    assert set(chosen.values()) == {0.5} and len(chosen) == 4 * len(model.model.layers)
    assert not torch.equal(model.model.layers[0].input_layernorm.weight, norms)  # something was folded
    after = model(tokens)
    assert (after - before).abs().max() <= 1e-4 * before.abs().max()


def test_smoothquant_keeps_the_tiny_model_close_and_beats_plain_w8a8(qwen_tiny):
    tokens = torch.randint(0, 400, (2, 64))
    float_model = copy.deepcopy(qwen_tiny.model)
    reference = float_model(tokens).log_softmax(-1)
    smoothed = copy.deepcopy(qwen_tiny.model)
    assert smoothquant(smoothed, qwen_tiny.tokenizer, source=CALIB, samples=8, seqlen=128, progress=False) == 4 * 2 + 1
    assert isinstance(smoothed.model.layers[1].mlp.down_proj, W8A8Linear) and isinstance(smoothed.lm_head, Int8Linear)
    plain = copy.deepcopy(qwen_tiny.model)
    plain.fuse_projections()
    for layer in plain.model.layers:
        for parent, names in ((layer.self_attn, ("qkv_proj", "o_proj")), (layer.mlp, ("gate_up_proj", "down_proj"))):
            for name in names:
                setattr(parent, name, W8A8Linear(getattr(parent, name)))

    def kl(model) -> float:  # KL(float || quantized) per position
        return (reference.exp() * (reference - model(tokens).log_softmax(-1))).sum(-1).mean().item()

    assert kl(smoothed) < kl(plain) / 2  # measured 3.5e-6 against 1.8e-5


def test_outlier_channels_are_computed_in_float_and_cut_the_error():
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=False)
    x = torch.randn(6, 256)
    x[:, [3, 70]] *= 80  # two channels far above the rest, in every token
    outliers = torch.tensor([3, 70])
    layer = W8A8Linear(linear, outliers=outliers)
    assert torch.equal(layer.outliers, outliers) and layer.qweight[:, [3, 70]].eq(0).all()
    # The formula: the int8 product of the rest (both operands with those channels zeroed) plus the float product of them.
    rest = W8A8Linear(nn.Linear(256, 96, bias=False).requires_grad_(False), kernel="dequantize")
    rest.qweight, rest.scale = layer.qweight, layer.scale
    kept = x.clone()
    kept[:, [3, 70]] = 0
    expected = rest(kept) + x[:, [3, 70]] @ linear.weight[:, [3, 70]].T
    assert (layer(x) - expected).abs().max() <= 1e-4 * expected.abs().max()
    exact = linear(x)

    def error(y: torch.Tensor) -> float:
        return ((y - exact).norm() / exact.norm()).item()

    assert error(layer(x)) < error(W8A8Linear(linear)(x)) / 5
    assert W8A8Linear(linear, outliers=torch.tensor([], dtype=torch.long)).outliers is None


def test_smoothquant_keeps_each_projections_widest_smoothed_channels_in_float(qwen_tiny):
    model, model_without = qwen_tiny.model, copy.deepcopy(qwen_tiny.model)
    smoothquant(model, qwen_tiny.tokenizer, source=CALIB, samples=4, seqlen=64, progress=False, outliers=3)
    down = model.model.layers[0].mlp.down_proj
    assert down.outliers is not None and len(down.outliers) == 3 and down.outlier_weight.shape == (3, down.out_features)
    smoothquant(model_without, qwen_tiny.tokenizer, source=CALIB, samples=4, seqlen=64, progress=False, outliers=0)
    assert model_without.model.layers[0].mlp.down_proj.outliers is None

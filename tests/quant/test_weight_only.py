"""Weight-only int8/int4: the kernels compute exactly with their dequantized weights, and the
quantized built-in model stays close to bf16 on real text."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from puyu.kernels import build as kernels
from puyu.quant.weight_only import Int4Linear, Int8Linear, quantize_model
from tests.conftest import DATASETS

CPU_KERNELS = ["avx2", "packed", "dequantize"] if kernels.available() else ["packed", "dequantize"]  # every path selectable here


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_kernel_path_computes_the_quantized_weights_in_the_models_dtype(dtype, kernel):
    torch.manual_seed(0)
    linear = nn.Linear(128, 96, bias=True).to(dtype)
    x = torch.randn(2, 5, 128, dtype=dtype)
    # The packed kernels take bf16 activations whatever the model's dtype: bf16 rounding of x and y; the avx2 kernels
    # quantize them to int8 per block of 32.
    tolerance = 1e-4 if dtype == torch.float32 and kernel == "dequantize" else 0.1
    int8 = Int8Linear(linear, kernel)
    w8 = (linear.weight.float() / int8.scale.float()[:, None]).round().clamp(-127, 127) * int8.scale.float()[:, None]
    y8 = int8(x)
    assert y8.dtype == dtype and y8.shape == (2, 5, 96)
    assert (y8.float() - nn.functional.linear(x.float(), w8, linear.bias.float())).abs().max() <= tolerance
    int4 = Int4Linear(linear, group_size=32, kernel=kernel)
    # The module docstring's formula, computed here independently of either kernel.
    w = linear.weight.float().reshape(96, 4, 32)
    low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = (high - low) / 15
    expected = (((w - low) / scale).round().clamp(0, 15) * scale + low).reshape(96, 128)
    y4 = int4(x)
    assert y4.dtype == dtype
    assert (y4.float() - nn.functional.linear(x.float(), expected, linear.bias.float())).abs().max() <= tolerance
    step = linear.weight.float().abs().max() / 127  # plus the bf16 rounding of the scales on the packed path
    assert (int8.dequantize().float() - linear.weight.float()).abs().max() <= step * (1.5 if kernel == "packed" else 1)
    if kernel == "dequantize":
        assert torch.allclose(int4.dequantize(torch.float32), expected, atol=1e-2 if dtype == torch.bfloat16 else 1e-5)


def test_packed_and_dequantize_paths_agree_on_a_model(tiny_llm):
    ids = torch.tensor([tiny_llm.tokenizer.encode("the quick brown fox jumps over the lazy dog")])
    logits = {}
    for kernel in CPU_KERNELS:
        model = copy.deepcopy(tiny_llm.model)
        quantize_model(model, "w4a16", group_size=32, kernel=kernel)
        with torch.no_grad():
            logits[kernel] = model(ids)[0]
    for kernel in set(CPU_KERNELS) - {"dequantize"}:
        assert logits[kernel].dtype == torch.float32
        # A random tiny model's logits are nearly flat: bf16 or int8 activations may swap a near-tie, rarely.
        assert (logits[kernel].argmax(-1) == logits["dequantize"].argmax(-1)).float().mean() >= 0.9
        assert nn.functional.cosine_similarity(logits[kernel], logits["dequantize"], dim=-1).min() > 0.999


def test_a_packed_kernel_off_the_cpu_or_an_unknown_kernel_is_refused():
    from puyu.errors import ConfigError
    from puyu.quant.weight_only import resolve_kernel

    assert resolve_kernel("auto", torch.device("cpu")) == ("avx2" if kernels.available() else "packed")
    assert resolve_kernel("auto", torch.device("cuda")) == "dequantize"
    with pytest.raises(ConfigError, match="CPU only"):
        resolve_kernel("packed", torch.device("cuda"))
    with pytest.raises(ConfigError, match="unknown"):
        resolve_kernel("fast", torch.device("cpu"))


def test_a_vocabulary_sized_int8_layer_runs_in_slices_with_the_same_values():
    torch.manual_seed(0)
    int8 = Int8Linear(nn.Linear(64, 30000, bias=False).to(torch.bfloat16), kernel="packed")  # 3 slices of rows
    x = torch.randn(7, 64, dtype=torch.bfloat16)
    assert torch.equal(int8(x), torch.ops.aten._weight_int8pack_mm(x, int8.qweight, int8.scale))


@pytest.mark.parametrize("mode, activation_bits", [("w4a16", 16), ("w4a8", 8)])
def test_quantize_model_replaces_projections_and_keeps_the_embedding(tiny_llm, mode, activation_bits):
    model = copy.deepcopy(tiny_llm.model)
    replaced = quantize_model(model, mode, group_size=32)
    assert replaced == 2 * 7 + 1
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.model.layers[0].mlp.up_proj, Int4Linear)
    assert model.model.layers[0].mlp.up_proj.activation_bits == activation_bits  # the int8 LM head keeps int16 activations
    assert isinstance(model.model.embed_tokens, nn.Embedding)


@pytest.mark.builtin
@pytest.mark.parametrize("mode, min_cosine, min_top1", [("w8a16", 0.998, 0.9), ("w4a16", 0.99, 0.85), ("w4a8", 0.99, 0.85)])
def test_builtin_model_stays_close_to_bf16_on_real_text(builtin_llm, mode, min_cosine, min_top1):
    text = (DATASETS / "pretrain" / "llamafactory_text" / "wiki_demo.txt").read_text().splitlines()[0][:2000]
    ids = torch.tensor([builtin_llm.tokenizer.encode(text)[:256]])
    reference = copy.deepcopy(builtin_llm.model).to(torch.bfloat16)
    quantized = copy.deepcopy(reference)
    quantize_model(quantized, mode, group_size=32)  # the GGUF's own Q4_1 blocks are 32 wide
    with torch.no_grad():
        a, b = reference(ids)[0].float(), quantized(ids)[0].float()
    cosine = nn.functional.cosine_similarity(a, b, dim=-1).mean().item()
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    print(f"{mode}: logits cosine {cosine:.4f}, top-1 agreement {top1:.3f} over {ids.shape[1]} tokens")
    assert cosine >= min_cosine and top1 >= min_top1


@pytest.mark.parametrize("mode", ["none", "w8a16", "w4a16"])
def test_fused_projections_compute_what_the_separate_ones_do(tiny_llm, mode):
    separate = copy.deepcopy(tiny_llm.model)
    if mode != "none":
        quantize_model(separate, mode, group_size=32)
    fused = copy.deepcopy(tiny_llm.model)
    fused.fuse_projections()
    if mode != "none":
        assert quantize_model(fused, mode, group_size=32) == 2 * 4 + 1  # qkv, o, gate_up, down per layer, and the head
    assert not hasattr(fused.model.layers[0].self_attn, "q_proj") and not hasattr(fused.model.layers[0].mlp, "up_proj")
    ids = torch.tensor([tiny_llm.tokenizer.encode("the quick brown fox jumps over the lazy dog")])
    with torch.no_grad():
        # Rows of a weight are quantized on their own, so fusing changes no value, only how many kernels run.
        assert torch.allclose(fused(ids), separate(ids), atol=1e-5)

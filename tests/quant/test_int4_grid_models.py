"""Models whose weights already sit on w4a16's grid (the built-in model, dequantized from a Q4_1 GGUF).

``--quant auto`` picks w4a16 for them, and only for them.  A LoRA adapter on a weight-quantized model stays unmerged,
in float beside the int weights (QLoRA-style inference): merging first would move every weight off the grid, and
rounding to int4 would then change all of them; the built-in model lost its tuned agent that way.
"""

from __future__ import annotations

import copy

import pytest
import torch

from puyu import LLM
from puyu.kernels import build as kernels
from puyu.model import pick_quant
from puyu.model.adapters import load_adapter, save_adapter
from puyu.model.lora import LoraConfig, add_lora, lora_modules
from puyu.quant.quantize import quantize_for_inference
from puyu.quant.weight_only import Int4Linear, Int8Linear, on_int4_grid, quantize_model
from tests.conftest import DATASETS

CALIB = str(DATASETS / "pretrain/llamafactory_text/c4_demo.jsonl")
IDS = torch.tensor([[5, 17, 99, 3, 250, 42, 7, 81, 12, 300, 64, 9]])
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@torch.no_grad()
def snap_to_int4_grid(llm: LLM, group_size: int = 32) -> None:
    """Put every decoder projection on the w4a16 grid, as the built-in model's are (quantizing it then changes nothing)."""
    kernel = "avx2" if kernels.available() else "dequantize"  # float16 scales and minima with avx2
    for name, module in llm.model.named_modules():
        if name.rpartition(".")[2] in PROJECTIONS:
            module.weight.copy_(Int4Linear(module, group_size, kernel).dequantize(torch.float32))


@pytest.fixture
def grid_model_and_adapter(tiny_llm, tmp_path):
    """The tiny model on an int4 grid, saved, and a random adapter on some projections (k_proj and gate_proj bare)."""
    snap_to_int4_grid(tiny_llm)
    tiny_llm.save(tmp_path / "grid")
    tuned = copy.deepcopy(tiny_llm.model)
    add_lora(tuned, LoraConfig(r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
    torch.manual_seed(3)
    for layer in lora_modules(tuned).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    save_adapter(tuned, tmp_path / "adapter")
    return tmp_path / "grid", tmp_path / "adapter"


def test_fusing_projections_keeps_each_adapter_exact(grid_model_and_adapter):
    folder, adapter = grid_model_and_adapter
    merged = LLM(folder, dtype="float32", device="cpu", adapter=adapter).model
    fused = LLM(folder, dtype="float32", device="cpu").model
    load_adapter(fused, adapter, merge=False)
    fused.fuse_projections()
    attn = fused.model.layers[0].self_attn
    assert attn.qkv_proj.r == 8 and fused.model.layers[0].mlp.gate_up_proj.r == 4  # q and v; up only
    with torch.no_grad():
        assert torch.allclose(fused(IDS), merged(IDS), atol=1e-5)


@pytest.mark.parametrize("kernel", ["dequantize", "auto"])
def test_an_adapter_on_int4_weights_keeps_the_base_on_its_grid(grid_model_and_adapter, kernel):
    folder, adapter = grid_model_and_adapter
    with torch.no_grad():
        reference = LLM(folder, dtype="float32", device="cpu", adapter=adapter).model(IDS)
    model = LLM(folder, dtype="float32", device="cpu").model
    load_adapter(model, adapter, merge=False)
    quantize_for_inference(model, None, "w4a16", group_size=32, kernel=kernel)
    layer = model.model.layers[1]
    assert isinstance(layer.self_attn.qkv_proj.base, Int4Linear) and isinstance(model.lm_head, Int8Linear)
    merged_first = LLM(folder, dtype="float32", device="cpu", adapter=adapter).model  # the old way: merge, then round
    merged_first.fuse_projections()
    quantize_model(merged_first, "w4a16", 32, kernel)
    with torch.no_grad():
        error = (model(IDS) - reference).abs().max().item()
        error_merged_first = (merged_first(IDS) - reference).abs().max().item()
    # Only the int8 LM head rounds now; merging first rounded every projection too.
    assert error < 0.01 and error * 5 < error_merged_first, (error, error_merged_first)


def test_llm_with_adapter_and_quant_keeps_the_adapter_unmerged(grid_model_and_adapter):
    folder, adapter = grid_model_and_adapter
    with torch.no_grad():
        reference = LLM(folder, dtype="float32", device="cpu", adapter=adapter).model(IDS)
    llm = LLM(folder, dtype="float32", device="cpu", adapter=adapter, quant="w4a16")
    assert lora_modules(llm.model)  # the adapter computes beside the int4 products
    with torch.no_grad():
        assert (llm.model(IDS) - reference).abs().max().item() < 0.01
    w8a8 = LLM(folder, dtype="float32", device="cpu")
    load_adapter(w8a8.model, adapter, merge=False)
    quantize_for_inference(w8a8.model, w8a8.tokenizer, "w8a8", calib=CALIB)
    assert not lora_modules(w8a8.model)  # SmoothQuant calibrates and smooths the merged weights


def test_the_grid_check_accepts_only_weights_w4a16_keeps(tiny_llm):
    weight = tiny_llm.model.model.layers[0].mlp.down_proj.weight
    assert not on_int4_grid(weight)
    snap_to_int4_grid(tiny_llm)
    assert on_int4_grid(weight) and not on_int4_grid(weight, group_size=64) and not on_int4_grid(weight[:, :48])
    nudged = weight.clone()
    nudged[3, 5] += 1e-3
    assert not on_int4_grid(nudged)


@pytest.mark.skipif(not kernels.available(), reason="auto picks w4a16 only where puyu's int4 CPU kernels run")
def test_auto_quant_picks_w4a16_only_for_a_model_on_the_grid(tiny_model_dir, grid_model_and_adapter):
    folder, adapter = grid_model_and_adapter
    assert pick_quant(folder, "auto", "cpu") == "w4a16"
    assert pick_quant(tiny_model_dir, "auto", "cpu") == "none"  # random float weights would be rounded
    assert pick_quant(tiny_model_dir, "w8a16", "cpu") == "w8a16"  # an explicit mode is kept
    llm = LLM(folder, device="cpu", adapter=adapter, quant="auto")
    assert llm.quant == "w4a16" and llm.model.dtype == torch.float32 and lora_modules(llm.model)
    assert isinstance(llm.model.model.layers[0].mlp.down_proj.base, Int4Linear)


def test_auto_quant_picks_w4a16_for_the_builtin_model():
    expected = "w4a16" if kernels.available() else "none"
    assert pick_quant("smollm2-135m-instruct", "auto", "cpu") == expected

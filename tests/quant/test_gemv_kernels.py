"""The AVX2 int4/int8 kernels: parity with the dequantized weights at every row count and group shape, the same
tokens eager and compiled, and a clean fallback when they cannot be built."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from puyu.home import home_subdir
from puyu.kernels import build as kernels
from puyu.kernels import gemv
from puyu.quant.weight_only import Int4Linear, Int8Linear, resolve_kernel

needs_avx2 = pytest.mark.skipif(not kernels.available(), reason="no AVX2 or no C compiler on this machine")


def _relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    return ((y - reference).norm() / reference.norm()).item()


@needs_avx2
@pytest.mark.parametrize("in_features, group_size", [(192, 32), (192, 64), (192, 96), (256, 128)])  # 96: odd blocks per group
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9, 70])  # row tiles of 4 and their rests
def test_avx2_products_match_the_dequantized_weights(in_features, group_size, rows):
    torch.manual_seed(rows)
    linear = nn.Linear(in_features, 80 + rows % 8, bias=True)  # tiles of 8 outputs, and a partial last tile
    x = torch.randn(rows, in_features)
    for layer in (Int4Linear(linear, group_size, kernel="avx2"), Int8Linear(linear, kernel="avx2")):
        assert layer.kernel == "avx2"
        reference = nn.functional.linear(x, layer.dequantize(torch.float32), linear.bias)
        y = layer(x)
        assert y.shape == reference.shape and y.dtype == torch.float32
        # int16 activations per block of 32: about 15 bits of each, closer than bf16's 8
        assert _relative_error(y, reference) < 1e-3, type(layer).__name__
        # each row is computed alone: the same values whatever else the batch holds (exact batched decoding)
        assert torch.equal(layer(x[:1]), y[:1]) and torch.equal(layer(x[-3:]), y[-3:])


def _w4a8(linear: nn.Linear, group_size: int) -> Int4Linear:
    layer = Int4Linear(linear, group_size, kernel="avx2")
    layer.activation_bits = 8
    return layer


@needs_avx2
@pytest.mark.parametrize("in_features, group_size", [(192, 32), (192, 64), (192, 96), (256, 128)])
@pytest.mark.parametrize("rows", [1, 4, 5, 70])
def test_int8_activation_products_are_the_quantized_activations_times_the_weights(in_features, group_size, rows):
    """w4a8: the activations rounded per block of 32 to int8 (llama.cpp's Q8_1), times the int4 weights as they are;
    the low term uses the sum of the rounded activations, so the reference is one plain matmul."""
    torch.manual_seed(rows)
    linear = nn.Linear(in_features, 80 + rows % 8, bias=True)
    x = torch.randn(rows, in_features) * torch.linspace(0.1, 4.0, in_features)  # unequal channels, as in a model
    layer = _w4a8(linear, group_size)
    weight = layer.dequantize(torch.float32)
    y = layer(x)
    reference = nn.functional.linear(gemv.quantize_activations(x, 8), weight, linear.bias)
    assert _relative_error(y, reference) < 1e-5
    # int8 rounding is coarser than int16's: farther from the float product, still close
    assert 1e-4 < _relative_error(y, nn.functional.linear(x, weight, linear.bias)) < 2e-2
    assert torch.equal(layer(x[:1]), y[:1]) and torch.equal(layer(x[-3:]), y[-3:])
    assert torch.equal(torch.compile(layer, dynamic=False)(x), y)


def test_the_tiled_layouts_give_back_what_was_packed():
    torch.manual_seed(0)
    q, scale, low = torch.randint(0, 16, (21, 128), dtype=torch.uint8), torch.rand(21, 4), torch.randn(21, 4)
    codes, table = gemv.pack_int4(q, scale, low)
    assert codes.shape == (3, 16, 8) and table.shape == (3, 4, 2, 8)
    back = gemv.unpack_int4(codes, table, 21)
    assert torch.equal(back[0], q) and torch.equal(back[1], scale.half()) and torch.equal(back[2], low.half())
    # the nibble order the C kernel reads: input 2i of a chunk at bit 4i, input 2i + 1 at bit 16 + 4i
    word = int(codes[0, 0, 0]) & 0xFFFFFFFF
    assert [(word >> s) & 15 for s in (0, 16, 4, 20, 8, 24, 12, 28)] == q[0, :8].tolist()
    w8 = torch.randint(-127, 128, (13, 64), dtype=torch.int8)
    codes8, scale8 = gemv.pack_int8(w8, torch.rand(13))
    assert codes8.shape == (2, 32, 8, 2) and torch.equal(gemv.unpack_int8(codes8, scale8, 13)[0], w8)


@needs_avx2
@pytest.mark.parametrize("group_size", [32, 64, 96])
def test_every_build_this_cpu_runs_gives_the_same_bits(group_size):
    """The AVX-VNNI and AVX-512 VNNI builds (where this CPU has them) against the AVX2 build, at every count of rows
    a tile takes at once (1-4, their sums chained differently): integer sums are exact and each lane's float steps the
    same, so the bits are equal."""
    torch.manual_seed(group_size)
    linear = nn.Linear(192, 8 * 5 + 3)  # pairs of tiles, a lone full tile and a partial one
    x = torch.randn(9, 192)
    outputs = []
    try:
        for build in kernels.builds_here():
            kernels.use_build(build)
            layers = (Int4Linear(linear, group_size, kernel="avx2"), _w4a8(linear, group_size), Int8Linear(linear, kernel="avx2"))
            outputs.append([layer(x[:rows]) for layer in layers for rows in (1, 2, 3, 9)])
    finally:
        kernels.use_build(kernels.build_name())
    for other in outputs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outputs[0], other))


def test_bad_inputs_to_the_ops_raise_clear_errors():
    if not kernels.available():
        pytest.skip("no AVX2 or no compilers on this machine")
    codes, table = gemv.pack_int4(torch.randint(0, 16, (8, 64), dtype=torch.uint8), torch.rand(8, 2), torch.rand(8, 2))
    with pytest.raises(RuntimeError, match="multiples of 32"):
        gemv.int4_matmul(torch.randn(2, 48), codes, table, 32, 8)
    with pytest.raises(RuntimeError, match="float tensor"):
        gemv.int4_matmul(torch.ones(2, 64, dtype=torch.long), codes, table, 32, 8)
    with pytest.raises(RuntimeError, match="activation_bits must be 8 or 16"):
        gemv.int4_matmul(torch.randn(2, 64), codes, table, 32, 8, activation_bits=4)


@needs_avx2
def test_avx2_keeps_the_models_dtype_and_leading_shape():
    linear = nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    for layer in (Int4Linear(linear, 32, kernel="avx2"), Int8Linear(linear, kernel="avx2")):
        y = layer(x)
        assert y.dtype == torch.bfloat16 and y.shape == (2, 3, 48)
        reference = nn.functional.linear(x.float(), layer.dequantize(torch.float32), linear.bias.float())
        assert _relative_error(y.float(), reference) < 0.02  # bf16 x and y


@needs_avx2
def test_shapes_off_the_32_grid_fall_back_or_are_refused():
    from puyu.errors import ConfigError

    assert Int8Linear(nn.Linear(40, 16), kernel="auto").kernel == "packed"  # auto picks what fits
    with pytest.raises(ConfigError, match="multiples of 32"):
        Int8Linear(nn.Linear(40, 16), kernel="avx2")
    with pytest.raises(ConfigError, match="multiples of 32"):
        Int4Linear(nn.Linear(48, 16), 16, kernel="avx2")


@needs_avx2
def test_compiled_avx2_decode_gives_the_eager_tokens(tiny_llm):
    """The kernels are custom ops under torch.compile: the same inputs give the same bits, and a compiled quantized
    engine decodes the eager engine's tokens."""
    from puyu.engine import EngineConfig, LLMEngine
    from puyu.generation import SamplingParams

    torch.manual_seed(0)
    linear, x = nn.Linear(64, 96), torch.randn(1, 7, 64)
    for layer in (Int4Linear(linear, 32, kernel="avx2"), Int8Linear(linear, kernel="avx2")):
        assert torch.equal(torch.compile(layer, dynamic=False)(x), layer(x))
    words = "the quick brown fox jumps over a lazy dog while you are fine today".split()
    batch = [tiny_llm.tokenizer.encode(" ".join(words[i : i + 3 + i % 4])) for i in range(6)]
    greedy = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)
    tokens = []
    for compile in (False, True):
        config = EngineConfig(quant="w4a16", quant_group_size=32, quant_kernel="avx2", compile=compile)
        engine = LLMEngine(copy.deepcopy(tiny_llm.model), tiny_llm.tokenizer, config)
        try:
            tokens.append([r.token_ids for r in engine.generate(batch, greedy)])
        finally:
            engine.shutdown()
    assert tokens[0] == tokens[1]


def test_without_a_compiler_auto_falls_back_to_the_packed_kernels(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    kernels._library.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="puyu.kernels.build"):
            assert not kernels.available()
        assert resolve_kernel("auto", torch.device("cpu")) == "packed"
        assert "PyTorch's own kernels" in caplog.text
    finally:
        kernels._library.cache_clear()


@needs_avx2
def test_a_damaged_cached_library_is_built_again(tmp_path):
    """A new process (dlopen keeps a loaded library by name, so only a new process reads the file again)."""
    env = {**os.environ, "PUYU_HOME": str(tmp_path)}
    (tmp_path / "kernels").mkdir()
    for ops in home_subdir("kernels").glob("ops-*.so"):  # the torch ops as built here (about 20 s to build again)
        shutil.copy(ops, tmp_path / "kernels")
    check = [sys.executable, "-c", "from puyu.kernels import build; print(build.available())"]
    assert subprocess.run(check, env=env, capture_output=True, text=True, check=True).stdout.strip() == "True"
    [built] = (tmp_path / "kernels").glob("kernels-*.so")
    built.write_bytes(b"not a library")
    assert subprocess.run(check, env=env, capture_output=True, text=True, check=True).stdout.strip() == "True"
    assert built.read_bytes()[:4] == b"\x7fELF"

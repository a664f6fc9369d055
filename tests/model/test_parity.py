"""Logits of puyu's model equal transformers' on tiny random configs (fp32, max abs diff <= 1e-4)."""

from __future__ import annotations

import pytest
import torch

from puyu.model import load_model
from tests.conftest import make_hf_model

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

CASES = {
    "llama": dict(arch="llama"),
    "llama-tied-mha": dict(arch="llama", tie_word_embeddings=True, num_key_value_heads=4),
    "llama-bias": dict(arch="llama", attention_bias=True, mlp_bias=True),
    "qwen2": dict(arch="qwen2"),
    "rope-linear": dict(arch="llama", rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "rope-llama3": dict(arch="llama", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "rope-yarn": dict(arch="qwen2", rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
}


def _hf_and_ours(tmp_path, tiny_tokenizer_dir, case, device):
    overrides = dict(CASES[case])
    arch = overrides.pop("arch")
    hf = make_hf_model(tmp_path / case, tiny_tokenizer_dir, arch=arch, **overrides).to(device)
    ours, _ = load_model(tmp_path / case, dtype="float32", device=device)
    return hf, ours


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_prefill_and_cached_decode_match_transformers(tmp_path, tiny_tokenizer_dir, case, device):
    hf, ours = _hf_and_ours(tmp_path, tiny_tokenizer_dir, case, device)
    torch.manual_seed(1)
    ids = torch.randint(0, 400, (2, 24), device=device)
    with torch.no_grad():
        ref = hf(ids).logits
        full = ours(ids)
        assert (full - ref).abs().max().item() <= 1e-4

        cache = ours.new_cache(2, 32)
        steps = [ours(ids[:, :10], cache=cache)]
        steps += [ours(ids[:, t : t + 1], cache=cache) for t in range(10, 24)]
    stepped = torch.cat(steps, dim=1)
    assert cache.length == 24
    assert (stepped - ref).abs().max().item() <= 1e-4


def test_dynamic_ntk_rope_matches_transformers_beyond_the_trained_context(tmp_path, tiny_tokenizer_dir):
    hf = make_hf_model(tmp_path / "dyn", tiny_tokenizer_dir, max_position_embeddings=16,
                       rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    ours, _ = load_model(tmp_path / "dyn", dtype="float32", device="cpu")
    ids = torch.randint(0, 400, (1, 40))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-4


def test_left_padded_batch_gives_each_row_its_own_logits(tiny_model_dir):
    ours, _ = load_model(tiny_model_dir, dtype="float32", device="cpu")
    short, long = torch.randint(0, 400, (1, 5)), torch.randint(0, 400, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    real = batch != -1
    real[0, :4] = False
    cache = ours.new_cache(2, 16)
    cache.set_padding(real)
    positions = (real.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        got = ours(batch, positions, cache=cache)
        alone = ours(short)
    assert not torch.isnan(got).any()
    assert (got[0, 4:] - alone[0]).abs().max().item() <= 1e-4


def test_bfloat16_logits_stay_close_to_fp32(tiny_model_dir):
    fp32, _ = load_model(tiny_model_dir, dtype="float32", device="cpu")
    bf16, _ = load_model(tiny_model_dir, dtype="bfloat16", device="cpu")
    ids = torch.randint(0, 400, (1, 16))
    with torch.no_grad():
        a, b = fp32(ids), bf16(ids).float()
    assert bf16.dtype == torch.bfloat16
    assert (a - b).abs().max().item() < 0.05 * a.abs().max().item()


def test_hidden_output_is_the_normed_final_state_and_the_head_gives_the_logits(tmp_path, tiny_tokenizer_dir):
    hf, ours = _hf_and_ours(tmp_path, tiny_tokenizer_dir, "llama", "cpu")
    ids = torch.randint(0, 400, (2, 12))
    keep = torch.tensor([0, 5, 11])
    with torch.no_grad():
        hidden = ours(ids, output="hidden")
        assert hidden.shape == (2, 12, ours.config.hidden_size)
        assert (hidden - hf.model(ids).last_hidden_state).abs().max().item() <= 1e-4
        assert torch.equal(ours.head(hidden), ours(ids))
        assert torch.equal(ours(ids, logits_to_keep=3, output="hidden"), hidden[:, -3:])
        assert torch.equal(ours(ids, logits_to_keep=keep, output="hidden"), hidden[:, keep])
        assert torch.equal(ours.head(hidden[:, keep]), ours(ids, logits_to_keep=keep))
    with pytest.raises(ValueError, match="output"):
        ours(ids, output="probs")


def test_short_bf16_training_spans_attend_in_fp32_long_ones_and_inference_in_bf16():
    """Under bf16 autocast on the CPU, training attention over short spans is SDPA in fp32 rounded to bf16 (PyTorch's
    CPU bf16 kernel is slower there); longer spans and inference keep autocast's bf16 SDPA."""
    import torch.nn.functional as F

    from puyu.model.transformer import SHORT_SPAN, attention

    torch.manual_seed(0)
    for length, grad in ((SHORT_SPAN, True), (SHORT_SPAN + 1, True), (SHORT_SPAN, False)):
        q, k, v = (torch.randn(1, 4, length, 16, requires_grad=grad) for _ in range(3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attention(q, k, v, None, causal=True)
            in_bf16 = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        in_fp32 = F.scaled_dot_product_attention(q, k, v, is_causal=True).to(torch.bfloat16)
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, in_fp32 if grad and length <= SHORT_SPAN else in_bf16)
        if grad:
            out.float().sum().backward()
            assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))

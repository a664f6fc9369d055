"""A whole training step of a tiny model through puyu's training kernels (LM-head loss, RMSNorm, RoPE, attention within
spans) against the same step in torch ops: the loss and every parameter's gradient agree, float32 and under bf16
autocast, on causal rows and on rows packed with several documents; inference never takes the kernels."""

from __future__ import annotations

import pytest
import torch

from puyu.kernels import build, cross_entropy, rms_norm, rope, span_attention

pytestmark = pytest.mark.skipif(not build.available(), reason="no AVX2 or no C/C++ compilers on this machine")
KERNELS = ((cross_entropy, "softmax_cross_entropy_"), (rms_norm, "rms_norm"), (rope, "rope"),
           (span_attention, "span_attention"))


def _count_calls(monkeypatch, calls: list) -> None:
    for module, name in KERNELS:
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))


def _kernels_off(monkeypatch) -> None:
    for module, _ in KERNELS:
        monkeypatch.setattr(module, "usable", lambda *a: False)


def _packed(lengths: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of documents of ``lengths``: the block-diagonal causal mask [B, 1, T, T] and the positions [B, T]."""
    t = sum(lengths[0])
    mask = torch.zeros(len(lengths), 1, t, t, dtype=torch.bool)
    positions = torch.zeros(len(lengths), t, dtype=torch.long)
    for b, row in enumerate(lengths):
        start = 0
        for n in row:
            mask[b, 0, start : start + n, start : start + n] = torch.ones(n, n, dtype=torch.bool).tril()
            positions[b, start : start + n] = torch.arange(n)
            start += n
    return mask, positions


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bf16", [False, True])
def test_a_training_step_is_the_same_with_and_without_the_kernels(monkeypatch, tiny_llm, bf16, packed):
    from puyu.train.objective import LMObjective

    model = tiny_llm.model.float().train()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (2, 24), generator=g)
    mask, positions = _packed([[5, 11, 8], [24]]) if packed else (None, torch.arange(24).expand(2, 24))
    results, calls = [], []
    _count_calls(monkeypatch, calls)
    for on in (True, False):
        if not on:
            assert set(calls) == {name for _, name in KERNELS}
            _kernels_off(monkeypatch)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = LMObjective(model)(tokens, tokens.roll(-1, 1), positions, mask)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_k, grads_k), (loss_t, grads_t) = results
    torch.testing.assert_close(loss_k, loss_t, rtol=1e-6 if not bf16 else 1e-3, atol=1e-5 if not bf16 else 1e-2)
    for name, grad in grads_k.items():
        # bf16: within 5% or 1% of the gradient's largest entry (a bf16 rounding that flips early moves a few entries)
        want = grads_t[name]
        close = dict(rtol=1e-4, atol=1e-6) if not bf16 else dict(rtol=5e-2, atol=max(5e-3, 1e-2 * want.abs().max().item()))
        torch.testing.assert_close(grad, want, **close, msg=name)


def test_inference_never_takes_the_kernels(monkeypatch, tiny_llm):
    """Evaluation mode, or no gradients: the model's torch form, so the logits of chat and serving never change."""
    calls = []
    _count_calls(monkeypatch, calls)
    model = tiny_llm.model.float()
    tokens = torch.tensor([[5, 6, 7, 8]])
    model.train()
    with torch.no_grad():
        model(tokens)
    model.eval()
    model(tokens)
    assert calls == []

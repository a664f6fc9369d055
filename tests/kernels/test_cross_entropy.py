"""The training loss's softmax cross-entropy kernel: parity with torch's log-softmax reference (float32 and bf16,
vocabularies not a multiple of the vector width, padding rows, loss only), rows independent of the batch, extreme
logits, clear errors; and the LM-head loss gives the same gradients through the kernel and through torch."""

from __future__ import annotations

import pytest
import torch

from puyu.kernels import build
from puyu.kernels.cross_entropy import reference, softmax_cross_entropy_, usable

pytestmark = pytest.mark.skipif(not build.available(), reason="no AVX2 or no C/C++ compilers on this machine")


def _case(n: int, vocab: int, dtype: torch.dtype, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, vocab, generator=g) * scale).to(dtype), torch.randint(0, vocab, (n,), generator=g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, vocab, rows", [(64, 8192, 64), (70, 1001, 64), (9, 7, 5), (3, 49152, 3)])
def test_loss_and_gradient_match_the_reference(dtype, n, vocab, rows):
    logits, targets = _case(n, vocab, dtype, seed=vocab)
    expected_loss, expected_grad = reference(logits, targets, rows, grad=True)
    assert usable(logits)
    grad = logits.clone()
    loss = softmax_cross_entropy_(grad, targets, rows, True)
    assert loss.dtype == torch.float32 and loss.shape == (n,)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=2e-6)
    assert grad.dtype == dtype
    # the kernel's exp is a polynomial: float32 within a few ulps, bf16 within one rounding step
    tolerance = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=2**-7, atol=1e-9)
    torch.testing.assert_close(grad.float(), expected_grad.float(), **tolerance)
    assert torch.all(grad[rows:] == 0) and torch.all(loss[rows:] == 0)
    assert torch.all(grad[torch.arange(rows), targets[:rows]] < 0)  # softmax - 1 at each target


def test_loss_only_leaves_the_logits_alone():
    logits, targets = _case(16, 300, torch.bfloat16)
    before = logits.clone()
    loss = softmax_cross_entropy_(logits, targets, 16, False)
    assert torch.equal(logits, before)
    torch.testing.assert_close(loss, reference(before, targets, 16, grad=False)[0], rtol=1e-6, atol=2e-6)


def test_each_row_gets_the_same_bits_alone_as_in_a_batch():
    logits, targets = _case(33, 1000, torch.float32, seed=5)
    together = logits.clone()
    losses = softmax_cross_entropy_(together, targets, 33, True)
    for r in (0, 17, 32):
        alone = logits[r : r + 1].clone()
        assert torch.equal(softmax_cross_entropy_(alone, targets[r : r + 1], 1, True), losses[r : r + 1])
        assert torch.equal(alone[0], together[r])


def test_extreme_logits_stay_finite_as_torch_does():
    """Huge logits (a diverging run) and a target far below the top: the loss is the large finite value torch gives,
    the gradient a one-hot at the top minus one at the target."""
    logits = torch.zeros(2, 40)
    logits[0, 3], logits[1, 5] = 1e4, -1e4
    targets = torch.tensor([7, 5])
    expected_loss, expected_grad = reference(logits, targets, 2, grad=True)
    loss = softmax_cross_entropy_(logits, targets, 2, True)
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(logits, expected_grad, atol=1e-6, rtol=1e-6)


def test_clear_errors():
    logits, targets = _case(4, 10, torch.float32)
    with pytest.raises(RuntimeError, match="target is out of range"):
        softmax_cross_entropy_(logits, torch.tensor([0, 1, 10, 2]), 4, True)
    with pytest.raises(RuntimeError, match="contiguous float32 or bf16"):
        softmax_cross_entropy_(logits.half(), targets, 4, True)
    with pytest.raises(RuntimeError, match="targets must be int64"):
        softmax_cross_entropy_(logits, targets.int(), 4, True)
    assert not usable(logits.t()) and not usable(logits.half())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_lm_head_loss_is_the_same_through_the_kernel_and_through_torch(monkeypatch, dtype):
    """:class:`LinearCrossEntropy` (several chunks, padded rows, a trained head) under autocast where bf16."""
    import puyu.kernels.cross_entropy as cross_entropy
    import puyu.train.objective as objective

    monkeypatch.setattr(objective, "head_chunk_rows", lambda hidden, itemsize, trains: 64)
    g = torch.Generator().manual_seed(1)
    hidden0, weight0 = torch.randn(150, 32, generator=g), torch.randn(1000, 32, generator=g) * 0.3
    targets = torch.randint(0, 1000, (150,), generator=g)
    results = []
    for kernel in (True, False):
        if not kernel:
            monkeypatch.setattr(cross_entropy, "usable", lambda logits: False)
        hidden, weight = hidden0.clone().requires_grad_(), weight0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = objective.LinearCrossEntropy.apply(hidden, weight, targets, objective.head_chunk)
        loss.backward()
        results.append((loss.detach(), hidden.grad, weight.grad))
    (loss_k, dh_k, dw_k), (loss_t, dh_t, dw_t) = results
    close = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(loss_k, loss_t, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(dh_k, dh_t, **close)
    torch.testing.assert_close(dw_k, dw_t, **close)

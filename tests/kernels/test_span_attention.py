"""The training attention kernel: causal attention within spans against a float64 reference (SDPA span by span), its
gradients, grouped-query heads, positions outside every span, bf16 inputs, the same bits alone, in a batch and on any
thread count, when it is taken, and clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from puyu.kernels import build
from puyu.kernels.span_attention import LONGEST_SPAN, span_attention, spans_tensor, usable

pytestmark = pytest.mark.skipif(not build.available(), reason="no AVX2 or no C/C++ compilers on this machine")


def _reference(q, k, v, rows):
    """float64 SDPA, causal within each span, zeros elsewhere; q [B, T, H, D], k/v [B, T, KV, D]."""
    group = q.shape[2] // k.shape[2]
    qh, kh, vh = q.transpose(1, 2), k.repeat_interleave(group, 2).transpose(1, 2), v.repeat_interleave(group, 2).transpose(1, 2)
    out = torch.zeros_like(qh)
    for b, spans in enumerate(rows):
        for s, e in spans:
            out[b, :, s:e] = F.scaled_dot_product_attention(qh[b, :, s:e], kh[b, :, s:e], vh[b, :, s:e], is_causal=True)
    return out.transpose(1, 2)


def _inputs(shape, kv, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    b, t, h, d = shape
    return (torch.randn(b, t, h, d, generator=g, dtype=dtype), torch.randn(b, t, kv, d, generator=g, dtype=dtype),
            torch.randn(b, t, kv, d, generator=g, dtype=dtype), torch.randn(b, t, h, d, generator=g, dtype=dtype))


def _kernel(q, k, v, grad, spans):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = span_attention(q, k, v, spans)
    out.backward(grad)
    return out, q.grad, k.grad, v.grad


CASES = [  # (B, T, H, D), KV heads, spans per row
    ((2, 37, 4, 64), 2, [[(0, 5), (5, 6), (6, 30), (30, 37)], [(0, 37)]]),
    ((3, 64, 9, 64), 3, [[(0, 64)]] * 3),
    ((1, 20, 2, 8), 2, [[(0, 1), (1, 20)]]),
    ((2, 300, 4, 128), 1, [[(0, 300)], [(0, 120), (120, 299), (299, 300)]]),
    ((2, 50, 6, 40), 3, [[(0, 17), (17, 50)], [(0, 50)]]),
    ((2, 16, 2, 16), 2, [[(3, 9)], [(0, 4), (10, 16)]]),  # positions outside every span
]


@pytest.mark.parametrize("shape, kv, rows", CASES)
def test_matches_sdpa_span_by_span_with_gradients(shape, kv, rows):
    q, k, v, grad = _inputs(shape, kv, seed=shape[1])
    reference = _reference(*(x.requires_grad_() for x in (q, k, v)), rows)
    expected = (reference, *torch.autograd.grad(reference, (q, k, v), grad))
    got = _kernel(q.float(), k.float(), v.float(), grad.float(), spans_tensor(rows))
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5, msg=name)


def test_bf16_inputs_compute_in_float32_and_give_bf16_gradients():
    q, k, v, grad = _inputs((2, 24, 4, 32), 2, seed=3, dtype=torch.float32)
    spans = spans_tensor([[(0, 10), (10, 24)], [(0, 24)]])
    q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
    out, dq, dk, dv = _kernel(q16, k16, v16, grad, spans)
    out32, dq32, dk32, dv32 = _kernel(q16.float(), k16.float(), v16.float(), grad, spans)
    assert out.dtype == torch.float32 and torch.equal(out, out32)
    for got, want in ((dq, dq32), (dk, dk32), (dv, dv32)):
        assert got.dtype == torch.bfloat16 and torch.equal(got, want.bfloat16())


def test_a_span_gives_the_same_bits_alone_in_a_batch_and_on_any_thread_count():
    q, k, v, grad = _inputs((3, 40, 4, 64), 2, seed=5, dtype=torch.float32)
    rows = [[(0, 13), (13, 40)], [(0, 40)], [(0, 7), (7, 40)]]
    together = _kernel(q, k, v, grad, spans_tensor(rows))
    alone = _kernel(q[1:2], k[1:2], v[1:2], grad[1:2], spans_tensor([rows[1]]))
    for a, b in zip(together, alone):
        assert torch.equal(a[1:2], b)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _kernel(q, k, v, grad, spans_tensor(rows))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(together, single):
        assert torch.equal(a, b)


def test_when_it_is_taken():
    q, k = torch.randn(2, 16, 4, 64), torch.randn(2, 16, 2, 64)
    assert usable(q, k, longest=16, spans=4)
    assert not usable(torch.randn(2, 16, 4, 12), torch.randn(2, 16, 2, 12), longest=16, spans=4)  # head dim not of 8
    assert not usable(q, k, longest=LONGEST_SPAN + 1, spans=4)  # long spans: PyTorch's flash attention
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert not usable(q, k, longest=16, spans=1)  # 2 tasks for 4 threads
    finally:
        torch.set_num_threads(threads)


def test_clear_errors():
    q, k, v, _ = _inputs((1, 8, 2, 16), 2, seed=0, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="a span is out of range"):
        span_attention(q, k, v, spans_tensor([[(0, 9)]]))
    with pytest.raises(RuntimeError, match="a span is out of range"):
        span_attention(q, k, v, torch.tensor([[1, 0, 8]]))
    with pytest.raises(RuntimeError, match=r"expected q \[B, T, H, D\] and k, v \[B, T, KV, D\]"):
        span_attention(q, k[:, :, :, :8], v[:, :, :, :8], spans_tensor([[(0, 8)]]))
    with pytest.raises(RuntimeError, match=r"spans must be int64 \[N, 3\]"):
        span_attention(q, k, v, torch.tensor([[0, 8]]))

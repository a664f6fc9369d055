"""Decode attention straight from the paged cache: parity with SDPA over gathered copies (grouped heads, odd head
sizes, scattered slots), each sequence's bits independent of the batch, the same bits compiled, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from puyu.kernels import build
from puyu.kernels.attention import paged_decode_attention, usable

pytestmark = pytest.mark.skipif(not build.available(), reason="no AVX2 or no C/C++ compilers on this machine")


def _case(batch: int, heads: int, kv_heads: int, dim: int, slots: int = 400, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    keys, values = torch.randn(slots, kv_heads, dim, generator=g) * 3, torch.randn(slots, kv_heads, dim, generator=g)
    lengths = torch.randint(1, 90, (batch,), generator=g)
    table = torch.stack([torch.randperm(slots, generator=g)[: int(lengths.max())] for _ in range(batch)])
    return torch.randn(batch, heads, dim, generator=g), keys, values, table, lengths


def _reference(q, keys, values, table, lengths):
    rows = []
    for b in range(q.shape[0]):
        used = table[b, : int(lengths[b])]
        group = q.shape[1] // keys.shape[1]
        k, v = (t[used].transpose(0, 1).repeat_interleave(group, 0) for t in (keys, values))  # [H, n, D]
        rows.append(F.scaled_dot_product_attention(q[b][:, None], k, v)[:, 0])
    return torch.stack(rows)


@pytest.mark.parametrize("batch, heads, kv_heads, dim", [(1, 9, 3, 64), (5, 4, 2, 16), (3, 6, 6, 20), (2, 8, 1, 7)])
def test_matches_sdpa_over_the_gathered_context(batch, heads, kv_heads, dim):
    q, keys, values, table, lengths = _case(batch, heads, kv_heads, dim, seed=dim)
    out = paged_decode_attention(q, keys, values, table, lengths)
    assert out.shape == q.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, _reference(q, keys, values, table, lengths), rtol=1e-5, atol=2e-6)


def test_each_sequence_gets_the_same_bits_alone_in_a_batch_and_compiled():
    q, keys, values, table, lengths = _case(6, 9, 3, 64, seed=1)
    together = paged_decode_attention(q, keys, values, table, lengths)
    for b in range(6):
        n = int(lengths[b])
        alone = paged_decode_attention(q[b : b + 1], keys, values, table[b : b + 1, :n], lengths[b : b + 1])
        assert torch.equal(alone[0], together[b])
    compiled = torch.compile(lambda *a: paged_decode_attention(*a) * 1, dynamic=True)
    assert torch.equal(compiled(q, keys, values, table, lengths), together)


def test_rows_of_one_sequence_share_its_context_row_each_with_its_own_length():
    """A prompt chunk: its query rows name their sequence's row of slots and attend its first position + 1 entries,
    causally; each row gets the bits a lone decode step over that prefix gets (so chunking never changes a token)."""
    q, keys, values, table, _ = _case(7, 9, 3, 64, seed=4)
    contexts = table[:2, :40]
    rows, lengths = torch.tensor([0, 0, 0, 0, 0, 1, 1]), torch.tensor([36, 37, 38, 39, 40, 1, 2])
    out = paged_decode_attention(q, keys, values, contexts, lengths, rows)
    for b in range(7):
        n, row = int(lengths[b]), int(rows[b])
        alone = paged_decode_attention(q[b : b + 1], keys, values, contexts[row : row + 1, :n], lengths[b : b + 1])
        assert torch.equal(out[b], alone[0])
    torch.testing.assert_close(out, _reference(q, keys, values, contexts[rows], lengths), rtol=1e-5, atol=2e-6)
    compiled = torch.compile(lambda *a: paged_decode_attention(*a) * 1, dynamic=True)
    assert torch.equal(compiled(q, keys, values, contexts, lengths, rows), out)
    with pytest.raises(RuntimeError, match="out of range"):
        paged_decode_attention(q, keys, values, contexts, lengths, rows + 1)  # a row past the context rows
    with pytest.raises(RuntimeError, match="rows must be int64"):
        paged_decode_attention(q, keys, values, contexts, lengths, rows[:3])


def test_large_scores_do_not_overflow_and_padding_is_never_read():
    q, keys, values, table, lengths = _case(2, 4, 2, 32, seed=2)
    q = q * 50  # scores in the thousands: softmax subtracts the maximum
    table[0, int(lengths[0]) :] = 10**9  # past a row's length: never read
    out = paged_decode_attention(q, keys, values, table, lengths)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], _reference(q, keys, values, table, lengths)[1], rtol=1e-4, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    q, keys, values, table, lengths = _case(2, 4, 2, 16, slots=50, seed=3)
    with pytest.raises(RuntimeError, match="out of range"):
        paged_decode_attention(q, keys, values, table.clamp(max=49) + 1, lengths.clamp(min=50))  # a length past L
    bad = table.clone()
    bad[0, 0] = 50
    with pytest.raises(RuntimeError, match="out of range"):
        paged_decode_attention(q, keys, values, bad, lengths)
    with pytest.raises(RuntimeError, match="float32"):
        paged_decode_attention(q.double(), keys, values, table, lengths)
    with pytest.raises(RuntimeError, match="shapes disagree"):
        paged_decode_attention(q[:, :3], keys, values, table, lengths)
    assert usable(torch.float32, torch.device("cpu")) and not usable(torch.bfloat16, torch.device("cpu"))

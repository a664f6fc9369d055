"""The training RoPE kernel: the model's torch form's bits forward (float32, bf16 and mixed), its gradient within one
bf16 rounding (the kernel rounds once, torch after each step), tables of odd half-widths, clear errors."""

from __future__ import annotations

import pytest
import torch

from puyu.kernels import build
from puyu.kernels.rope import rope, usable
from puyu.model.rope import apply_rope

pytestmark = pytest.mark.skipif(not build.available(), reason="no AVX2 or no C/C++ compilers on this machine")


def _tables(batch, steps, dim, dtype, seed=0):
    angles = torch.randn(batch, steps, dim // 2, generator=torch.Generator().manual_seed(seed)) * 3
    angles = torch.cat([angles, angles], -1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _run(fn, x0, seed=1):
    x = x0.clone().requires_grad_()
    y = fn(x)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.dtype)
    y.backward(grad)
    return y, x.grad


@pytest.mark.parametrize("x_dtype, table_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                  (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("dim", [64, 20, 6])
def test_matches_the_models_rope(x_dtype, table_dtype, dim):
    x = torch.randn(2, 9, 3, dim, generator=torch.Generator().manual_seed(dim)).to(x_dtype)  # [B, T, heads, D]
    cos, sin = _tables(2, 9, dim, table_dtype)
    assert usable(x, cos)
    y, dx = _run(lambda t: rope(t, cos, sin), x)
    y_t, dx_t = _run(lambda t: apply_rope(t.transpose(1, 2), cos, sin).transpose(1, 2), x)
    assert y.dtype == y_t.dtype and dx.dtype == x_dtype
    assert torch.equal(y, y_t)
    exact = x_dtype == table_dtype == torch.float32 or x_dtype == torch.float32
    torch.testing.assert_close(dx.float(), dx_t.float(), **(dict(rtol=1e-6, atol=1e-6) if exact else dict(rtol=2**-7, atol=2**-7)))


def test_clear_errors():
    cos, sin = _tables(1, 4, 8, torch.float32)
    with pytest.raises(RuntimeError, match=r"expected x \[B, T, H, D\] and tables \[B, T, D\]"):
        rope(torch.randn(1, 4, 2, 6), cos, sin)
    with pytest.raises(RuntimeError, match="both tables of one dtype"):
        rope(torch.randn(1, 4, 2, 8), cos, sin.bfloat16())
    assert not usable(torch.randn(1, 4, 2, 8).half(), cos)
    assert not usable(torch.randn(1, 4, 2, 8), cos.clone().requires_grad_())

"""The training RMSNorm kernel: parity with the model's torch form in float32, with a float64 reference in bf16 (it
rounds where the torch form rounds, and computes its backward in float32), the result dtypes of torch's promotion."""

from __future__ import annotations

import pytest
import torch

from puyu.kernels import build
from puyu.kernels import rms_norm as kernel

pytestmark = pytest.mark.skipif(not build.available(), reason="no AVX2 or no C/C++ compilers on this machine")
EPS = 1e-5


def _torch_form(x, w):  # puyu.model.transformer.RMSNorm without the kernel
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype)


def _run(norm, x0, w0, seed=1):
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    y = norm(x, w)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.dtype)
    y.backward(grad)
    return y, x.grad, w.grad, grad


def _inputs(shape, x_dtype, w_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2).to(x_dtype), (1 + 0.2 * torch.randn(shape[-1], generator=g)).to(w_dtype)


@pytest.mark.parametrize("shape", [(8, 33, 256), (5, 20), (3, 4, 576), (2, 7)])
def test_float32_matches_the_torch_form(shape):
    x, w = _inputs(shape, torch.float32, torch.float32, seed=shape[-1])
    y, dx, dw, _ = _run(lambda a, b: kernel.rms_norm(a, b, EPS), x, w)
    y_t, dx_t, dw_t, _ = _run(_torch_form, x, w)
    assert y.dtype == dx.dtype == dw.dtype == torch.float32
    torch.testing.assert_close(y, y_t, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx, dx_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dw, dw_t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_dtype, w_dtype, y_dtype", [(torch.bfloat16, torch.bfloat16, torch.bfloat16),
                                                       (torch.bfloat16, torch.float32, torch.float32),
                                                       (torch.float32, torch.bfloat16, torch.float32)])
def test_bf16_rounds_as_the_torch_form_and_is_at_least_as_accurate(x_dtype, w_dtype, y_dtype):
    x, w = _inputs((6, 40, 64), x_dtype, w_dtype)
    y, dx, dw, grad = _run(lambda a, b: kernel.rms_norm(a, b, EPS), x, w)
    assert (y.dtype, dx.dtype, dw.dtype) == (y_dtype, x_dtype, w_dtype)
    y_t, dx_t, dw_t, _ = _run(_torch_form, x, w)
    # forward: the same roundings as the torch form, so at most one bf16 step apart (the statistic's summation order)
    torch.testing.assert_close(y.float(), y_t.float(), rtol=2**-7, atol=1e-6)
    # backward against float64 (the normalised value unrounded, as the kernel's backward takes it)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    (w64 * x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + EPS)).backward(grad.double())
    for ours, theirs, exact in ((dx, dx_t, x64.grad), (dw, dw_t, w64.grad)):
        error, torch_error = (ours.double() - exact).abs().max(), (theirs.double() - exact).abs().max()
        assert error <= max(torch_error, 2**-7 * exact.abs().max())


def test_clear_errors():
    x, w = _inputs((4, 16), torch.float32, torch.float32)
    with pytest.raises(RuntimeError, match="weight \\[D\\] must be"):
        kernel.rms_norm(x, w[:8], EPS)
    assert not kernel.usable(x.half(), w)

"""The softmax cross-entropy of a chunk of logits and its gradient in one pass a row (``cross_entropy.c``, built by
:mod:`puyu.kernels.build`).

:func:`softmax_cross_entropy_` — the torch op ``puyu::softmax_cross_entropy_``: each row's loss, the gradient
``softmax - onehot`` written over the logits.  :func:`usable` says whether a chunk can take it;
:func:`reference` is what it computes, in torch ops (the fallback elsewhere, and the parity tests' reference).
"""

from __future__ import annotations

import torch

from puyu.kernels import build
from puyu.kernels.build import LIBRARY


@torch.library.register_fake("puyu::softmax_cross_entropy_", lib=LIBRARY)
def _(logits, targets, rows, grad):
    return logits.new_empty(logits.shape[0], dtype=torch.float32)


_OP = torch.ops.puyu.softmax_cross_entropy_.default


def usable(logits: torch.Tensor) -> bool:
    """Whether ``logits`` can take the kernel: contiguous float32 or bf16 ``[n, V]`` on a CPU where the kernels run."""
    return (logits.device.type == "cpu" and logits.dim() == 2 and logits.dtype in (torch.float32, torch.bfloat16)
            and logits.is_contiguous() and build.available())


def softmax_cross_entropy_(logits: torch.Tensor, targets: torch.Tensor, rows: int, grad: bool) -> torch.Tensor:
    """Row ``r < rows`` of ``logits`` ``[n, V]`` with target ``targets[r]``: its loss ``logsumexp(x_r) - x_r[t]``
    (float32 ``[n]``, 0 for the padding rows from ``rows`` on); with ``grad``, ``logits`` becomes the gradient
    ``softmax(x_r) - onehot(t)`` in its own dtype (0 in the padding rows)."""
    return _OP(logits, targets, rows, grad)


def reference(logits: torch.Tensor, targets: torch.Tensor, rows: int, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What :func:`softmax_cross_entropy_` computes, in torch ops: ``(loss per row, gradient or None)``; the logits
    are left as they are."""
    log_p = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # one fused pass, not logsumexp + sub + exp
    loss = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
    loss[:rows] = -log_p[:rows].gather(1, targets[:rows, None])[:, 0]
    if not grad:
        return loss, None
    d = log_p.exp_()
    d[rows:] = 0
    d[torch.arange(rows, device=logits.device), targets[:rows]] -= 1
    return loss, d.to(logits.dtype)

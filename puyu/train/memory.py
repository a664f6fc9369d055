"""Whether a run recomputes its layers in backward: ``train.grad_checkpointing: auto`` decided from measured memory.

Checkpointing never changes the result (the recomputed forward replays the same dropout draws), only the cost:
without it backward reuses every activation the forward saved, with it each decoder layer runs its forward twice.
On 2 AVX2 cores that is the difference between 145 and 90 tokens/s for the agent-tuning recipe (batch 2 x 1024,
LoRA on every projection), while the saved activations take 3.5 GB instead of a few hundred MB.

:func:`plan_checkpointing` measures what one decoder layer saves for backward (a short random input through the
first layer in training mode, under the run's autocast, the saved tensors counted with autograd's
``saved_tensors_hooks``; parameters and buffers not counted), scales it to a micro-batch through every layer, and
turns checkpointing off when that, times the allocator's overhead, fits in a share of the memory available
(``MemAvailable`` on a CPU, free device memory on CUDA), divided among this machine's ranks.  The overhead is
measured too: on Linux/glibc the process's peak resident memory was 3x the bytes autograd held (3.5 GB saved, 10.7 GB
peak, the freed activations of one step left in the heap as holes the next step's different sizes do not fit);
CUDA's caching allocator needs far less.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from puyu.model.estimate import memory
from puyu.model.transformer import Transformer

PROBE_TOKENS = 64
BUDGET_SHARE = 0.6  # of the available memory: the rest for the optimizer, the data, other programs
ALLOCATOR_OVERHEAD = {"cpu": 3.0, "cuda": 1.3}


@dataclass
class CheckpointPlan:
    """``on``: recompute layers in backward; ``reason``: the figures it was decided from, for the run's log."""

    on: bool
    reason: str


def saved_bytes(model: nn.Module, forward: Callable[[], object]) -> int:
    """Bytes of the tensors autograd keeps for backward while ``forward()`` runs, ``model``'s own parameters and
    buffers (which exist anyway) left out; a storage saved twice counts once."""
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def count(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in owned:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        forward()
    return sum(saved.values())


def saved_bytes_per_token(model: Transformer, autocast: contextlib.AbstractContextManager) -> float:
    """Bytes that one decoder layer keeps for backward per token of a training micro-batch (measured)."""
    layer = model.model.layers[0]
    device = next(layer.parameters()).device
    cos, sin = model.rope(torch.arange(PROBE_TOKENS, device=device)[None], torch.float32)
    was_training = layer.training
    layer.train()
    # A forked RNG: the probe's input and dropout draws leave the run's random stream (and so its result) unchanged.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast:
        x = torch.randn(1, PROBE_TOKENS, model.config.hidden_size, device=device, requires_grad=True)
        total = saved_bytes(model, lambda: layer(x, cos, sin, None, 0, None))
    layer.train(was_training)
    return total / PROBE_TOKENS


def available_bytes(device: torch.device) -> int:
    """Memory this process may still use: free device memory on CUDA, else the machine's available RAM, each shared
    by the ranks torchrun started on this machine."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = memory()[1]
    return free // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def plan_checkpointing(setting: bool | str, model: Transformer, tokens_per_micro_batch: int,
                       autocast: contextlib.AbstractContextManager, device: torch.device) -> CheckpointPlan:
    """``setting`` true/false as given; ``auto``: off when the saved activations fit (see the module docstring)."""
    if setting != "auto":
        return CheckpointPlan(bool(setting), "set in the recipe")
    activations = saved_bytes_per_token(model, autocast) * tokens_per_micro_batch * model.config.num_layers
    overhead = ALLOCATOR_OVERHEAD.get(device.type, ALLOCATOR_OVERHEAD["cpu"])
    free = available_bytes(device)
    need, budget = activations * overhead, free * BUDGET_SHARE
    figures = (f"activations {activations / 1e9:.1f} GB x{overhead:g} allocator overhead = {need / 1e9:.1f} GB "
               f"against {BUDGET_SHARE:.0%} of {free / 1e9:.1f} GB available")
    if need <= budget:
        return CheckpointPlan(False, f"auto: off, {figures}")
    return CheckpointPlan(True, f"auto: on, {figures}; recomputing each layer in backward")

"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and data position.

Layout: ``<run>/checkpoints/step-000040/`` holding ``state.pt`` (trainable
parameters by name, optimizer and scheduler state, the step - which is the data
position of step-addressed data, see :mod:`puyu.data.dataset` - the data
fingerprint, and the caller's extras such as the shard stream's cursors,
see :mod:`puyu.data.stream`) and one
``rng-rank<R>.pt`` per process (torch, CUDA and Python RNG states, so dropout
continues exactly).  A checkpoint is written to ``step-N.partial`` and renamed
when complete, so a kill while saving never leaves a half checkpoint that
:func:`latest_checkpoint` would pick.  State dicts go through
``torch.distributed.checkpoint.state_dict``, which gathers full tensors the
same way for one process, DDP and FSDP.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from puyu.errors import ConfigError
from puyu.train.distributed import DistEnv, barrier

log = logging.getLogger(__name__)
_SAVE = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
_LOAD = StateDictOptions(full_state_dict=True, strict=False)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, module: nn.Module, optimizer, scheduler, env: DistEnv, extra: dict[str, Any],
                    keep: int) -> Path:
    """Write the checkpoint of ``step`` (every rank calls this); returns its folder."""
    model_state = get_model_state_dict(module, options=_SAVE)
    optim_state = get_optimizer_state_dict(module, optimizer, options=_SAVE)
    final = run_dir / "checkpoints" / f"step-{step:06d}"
    partial = final.with_name(final.name + ".partial")
    if env.main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        state = {"step": step, "model": model_state, "optimizer": optim_state, "scheduler": scheduler.state_dict(), **extra}
        torch.save(state, partial / "state.pt")
    barrier(env)
    torch.save(_rng_state(), partial / f"rng-rank{env.rank}.pt")
    barrier(env)
    if env.main:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in sorted((run_dir / "checkpoints").glob("step-??????"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(env)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = sorted((run_dir / "checkpoints").glob("step-??????"))
    return found[-1] if found else None


def load_checkpoint(path: Path, module: nn.Module, optimizer, scheduler, env: DistEnv, fingerprint: str) -> tuple[int, dict[str, Any]]:
    """Restore a checkpoint into the live objects; returns the step to continue from and the ``extra`` it was saved with.

    Raises:
        ConfigError: the checkpoint was made on different data.
    """
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    if state.get("data_fingerprint") not in (None, fingerprint):
        raise ConfigError(f"{path} was trained on different data (or data settings); resume with the same recipe and files")
    set_model_state_dict(module, state["model"], options=_LOAD)
    set_optimizer_state_dict(module, optimizer, state["optimizer"], options=_LOAD)
    scheduler.load_state_dict(state["scheduler"])
    rng = path / f"rng-rank{env.rank}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False))
    else:
        log.warning("%s has no RNG state for rank %d (the process count changed): dropout will not repeat exactly", path, env.rank)
    log.info("resumed from %s (step %d)", path, state["step"])
    return int(state["step"]), {k: v for k, v in state.items() if k not in ("step", "model", "optimizer", "scheduler")}

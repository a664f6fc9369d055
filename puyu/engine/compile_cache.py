"""Where compiled decode steps live between starts: ``$PUYU_HOME/compile/<key>/``.

Inductor (torch.compile's backend) already caches what it generates (FX graphs,
AOT-autograd graphs, the C++ it builds) on disk; by default in a temporary
folder that is shared by everything and cleaned by the system.  The engine
points it, while it compiles at start, at a folder of its own keyed by what
the compiled code depends on: the model's configuration, dtype, quantization
and kernel path, the layers of an unmerged adapter, the draft model of
speculative decoding, Inductor's settings, puyu's ops (their schemas: the C++
wrapper calls them with the arguments they had), the torch version and the CPU
(its ATen dispatch level and flags).  A second start of the same configuration
then loads instead of building, which on 2 CPU cores is most of the compile time.

The folder is trusted only through its manifest (written after a compile
succeeded: the key and a SHA-256 of every file).  A folder without one (a
compile that crashed), with another key (copied from another machine or torch
version) or with a file that changed is deleted and rebuilt, never used.  The
manifest also keeps how long the cold compile and the last cached start took,
so the start-up log line can say how long to expect.  Setting
``TORCHINDUCTOR_CACHE_DIR`` yourself keeps Inductor's own handling.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import torch

from puyu.engine.config import EngineConfig
from puyu.engine.runner import inductor_options
from puyu.hardware import cpu_features
from puyu.home import home_subdir
from puyu.kernels import build as kernels
from puyu.model.lora import LoRALinear
from puyu.model.transformer import Transformer
from puyu.quant.weight_only import resolve_kernel

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
# A first compile with nothing cached, measured on 2 cores (w4a16 built-in model): 2-4 minutes with AVX-512, 4-6 with AVX2.
COLD_GUESS_S = {"AVX512": 200.0, "AVX2": 330.0}


def compile_key(model: Transformer, config: EngineConfig, draft: Transformer | None = None) -> dict:
    """What the compiled code depends on (``draft``: the draft model, compiled in the same start); any change gives
    another folder."""
    key = {
        "model": asdict(model.config),
        "dtype": str(model.dtype),
        "device": model.device.type,
        "quant": [config.quant, config.quant_group_size, _kernel(model, config), config.kv_quant],
        "adapter": _adapter_shape(model),
        "inductor": inductor_options(model.device),
        "ops": kernels.ops_signature(),
        "torch": torch.__version__,
        "cpu": [torch.backends.cpu.get_cpu_capability(), *cpu_features().names()],
    }
    if draft is not None:
        kernel = resolve_kernel(config.quant_kernel, draft.device) if config.draft_quant != "none" else ""
        key["draft"] = {"model": asdict(draft.config), "dtype": str(draft.dtype), "quant": [config.draft_quant, kernel]}
    return key


def _kernel(model: Transformer, config: EngineConfig) -> str:
    """The weight-only kernel path ``auto`` stands for here (it changes the graph: puyu's AVX2 ops or PyTorch's)."""
    return resolve_kernel(config.quant_kernel, model.device) if config.quant in ("w8a16", "w4a16", "w4a8") else config.quant_kernel


def _adapter_shape(model: Transformer) -> str:
    """Which layers carry an unmerged LoRA adapter and its rank (it adds operations to the graph); "" without."""
    layers = sorted(f"{name}:{m.r}" for name, m in model.named_modules() if isinstance(m, LoRALinear))
    return hashlib.sha256(" ".join(layers).encode()).hexdigest()[:16] if layers else ""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class CompileCache:
    """One configuration's folder; see the module docstring."""

    def __init__(self, key: dict, root: Path | None = None):
        self.key = key
        text = json.dumps(key, sort_keys=True, default=str)
        self.folder = (root or home_subdir("compile")) / hashlib.sha256(text.encode()).hexdigest()[:16]
        self.manifest: dict | None = None

    def check(self) -> str:
        """``hit``, ``cold`` (nothing yet), or why the folder was thrown away (``foreign``/``corrupt``/``incomplete``)."""
        if not self.folder.exists():
            return "cold"
        verdict = self._verdict()
        if verdict != "hit":
            log.warning("compile cache %s is %s; rebuilding it", self.folder, verdict)
            shutil.rmtree(self.folder, ignore_errors=True)
        return verdict

    def _verdict(self) -> str:
        try:
            manifest = json.loads((self.folder / MANIFEST).read_text())
        except (OSError, ValueError):
            return "incomplete"
        if manifest.get("key") != json.loads(json.dumps(self.key, default=str)):
            return "foreign"
        for name, digest in manifest.get("files", {}).items():
            path = self.folder / name
            if not path.is_file() or _digest(path) != digest:
                return "corrupt"
        self.manifest = manifest
        return "hit"

    def expected_seconds(self, verdict: str) -> float:
        """How long this start's compile should take, from what this machine measured before."""
        if verdict == "hit" and self.manifest.get("cached_s"):
            return self.manifest["cached_s"]
        if verdict == "hit":
            return self.manifest["cold_s"] / 4
        previous = [json.loads(p.read_text()).get("cold_s", 0) for p in self.folder.parent.glob(f"*/{MANIFEST}")]
        return max(previous, default=0) or COLD_GUESS_S.get(torch.backends.cpu.get_cpu_capability(), COLD_GUESS_S["AVX2"])

    @contextlib.contextmanager
    def active(self) -> Iterator[str]:
        """Point Inductor at the folder while compiling; on success, write the manifest. Yields the verdict."""
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir, temporary_cache_dir

        # Inductor writes its default into the variable once it has used it: only another value is the user's.
        if os.environ.get("TORCHINDUCTOR_CACHE_DIR") not in (None, default_cache_dir()):
            yield "user"
            return

        verdict = self.check()
        self.folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with temporary_cache_dir(str(self.folder)):
            yield verdict
        elapsed = time.perf_counter() - start
        timings = {"cold_s": elapsed} if verdict != "hit" else {"cold_s": self.manifest["cold_s"], "cached_s": elapsed}
        files = {str(p.relative_to(self.folder)): _digest(p) for p in sorted(self.folder.rglob("*"))
                 if p.is_file() and p.name != MANIFEST}
        if not files:  # this process had compiled it already (in memory): nothing to keep
            return
        (self.folder / MANIFEST).write_text(json.dumps({"key": self.key, "files": files, **timings}, default=str))

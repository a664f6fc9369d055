"""Where puyu stores what it makes: one home folder, ``$PUYU_HOME`` (default ``~/.puyu``).

Layout: ``models/`` (GGUF files converted once to safetensors), ``kb/`` (knowledge
bases), ``runs/`` (training, evaluation and other run outputs).
"""

from __future__ import annotations

import os
from pathlib import Path


def puyu_home() -> Path:
    """The home folder, created on first use."""
    home = Path(os.environ.get("PUYU_HOME") or Path.home() / ".puyu").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def home_subdir(name: str) -> Path:
    """A named folder under the home (``models``, ``kb``, ``runs``), created on first use."""
    path = puyu_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path

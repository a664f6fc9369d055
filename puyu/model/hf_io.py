"""Hugging Face model folders: read (config.json + safetensors, sharded or not) and write.

A folder written by :func:`save_pretrained` holds ``config.json``,
``model.safetensors``, ``generation_config.json`` (whose ``eos_token_id`` lists
the template's stop tokens), ``tokenizer.json`` and ``tokenizer_config.json``
with the chat template; ``transformers`` loads it with ``AutoModelForCausalLM``
and ``AutoTokenizer``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from puyu.errors import ModelLoadError
from puyu.model.config import ModelConfig
from puyu.model.keymaps import hf_to_native, native_to_hf
from puyu.model.transformer import Transformer
from puyu.tokenizer import Tokenizer


def read_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    if not path.exists():
        raise ModelLoadError(f"{folder} has no config.json; is it a Hugging Face model folder?")
    try:
        return ModelConfig.from_hf(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or re-download it") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder's safetensors files (the index decides the shards when present)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        hint = " (it has PyTorch .bin weights; re-save them as safetensors)" if list(folder.glob("*.bin")) else ""
        raise ModelLoadError(f"{folder} has no .safetensors weights{hint}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.exists():
            raise ModelLoadError(f"shard {file.name} named by the index is missing from {folder}; download it again")
        try:
            state.update(load_file(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {file}: {exc}; the file is damaged or incomplete, download it again") from None
    return state


def build_model(config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device | str) -> Transformer:
    """A :class:`Transformer` holding ``state`` (native keys), in ``dtype`` on ``device``."""
    with torch.device("meta"):
        model = Transformer(config)
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"the weights do not fit the config: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}; config and weights come from different models?"
        )
    for name, param in model.state_dict().items():
        if name in state and tuple(state[name].shape) != tuple(param.shape):
            raise ModelLoadError(f"tensor {name} has shape {tuple(state[name].shape)}, the config expects {tuple(param.shape)}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.to(device=device, dtype=dtype).eval()


def load_folder(folder: Path, dtype: torch.dtype, device: torch.device | str) -> tuple[Transformer, Tokenizer]:
    config = read_config(folder)
    model = build_model(config, hf_to_native(read_weights(folder), config), dtype, device)
    return model, Tokenizer.from_folder(folder)


def save_pretrained(model: Transformer, tokenizer: Tokenizer, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face folder (see the module docstring)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(native_to_hf(state, config), folder / "model.safetensors", metadata={"format": "pt"})
    hf = config.to_hf()
    hf["torch_dtype"] = str(dtype or model.dtype).removeprefix("torch.")
    hf.setdefault("bos_token_id", tokenizer.bos_id)
    hf.setdefault("eos_token_id", tokenizer.eos_id)
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    generation = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.stop_token_ids}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    tokenizer.save(folder)
    return folder

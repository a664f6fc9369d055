"""Hugging Face model folders: read (config.json + safetensors, sharded or not) and write.

A folder written by :func:`save_pretrained` holds ``config.json``,
``model.safetensors``, ``generation_config.json`` (whose ``eos_token_id`` lists
the template's stop tokens), ``tokenizer.json`` and ``tokenizer_config.json``
with the chat template; ``transformers`` loads it with ``AutoModelForCausalLM``
and ``AutoTokenizer``.

A quantized folder (``config.json`` with a ``quantization_config``: AWQ GEMM or
GPTQ, see :mod:`puyu.quant.formats`) loads the same way: its packed linears
become :class:`~puyu.quant.weight_only.Int4Linear` layers, everything else is
read as usual; :func:`save_quantized` writes one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from puyu.errors import ModelLoadError
from puyu.model.architectures import BY_ARCH, bin_conversion_command
from puyu.model.config import ModelConfig
from puyu.model.estimate import check_fits
from puyu.model.keymaps import hf_to_native, native_to_hf
from puyu.model.transformer import Transformer
from puyu.quant.formats import IntWeight, QuantSpec, join_state, split_state
from puyu.quant.weight_only import apply_int_weights
from puyu.tokenizer import Tokenizer


def read_hf_config(folder: Path) -> dict:
    """The folder's ``config.json`` as a dict."""
    path = folder / "config.json"
    if not path.exists():
        raise ModelLoadError(f"{folder} has no config.json; is it a Hugging Face model folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or re-download it") from None


def read_config(folder: Path) -> ModelConfig:
    return ModelConfig.from_hf(read_hf_config(folder))


def read_quant_spec(folder: Path) -> QuantSpec | None:
    """The folder's quantization (None for a float folder); an unsupported one is a :class:`ModelLoadError`."""
    return QuantSpec.from_config(read_hf_config(folder), str(folder))


def read_weights(folder: Path, names: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the folder's safetensors files (the index decides the shards when present): all of them, or
    those whose name ``names`` accepts (read one by one, without loading the rest)."""
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        try:
            if names is None:
                state.update(load_file(file))
                continue
            with safe_open(file, framework="pt") as f:
                state.update({key: f.get_tensor(key) for key in f.keys() if names(key)})
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {file}: {exc}; the file is damaged or incomplete, download it again") from None
    return state


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        hint = (" (it has PyTorch .bin weights, which puyu does not unpickle; convert them once with: "
                f"{bin_conversion_command(str(folder))})" if list(folder.glob("*.bin")) else "")
        raise ModelLoadError(f"{folder} has no .safetensors weights{hint}")
    for file in files:
        if not file.exists():
            raise ModelLoadError(f"shard {file.name} named by the index is missing from {folder}; download it again")
    return files


def build_model(config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device | str,
                quantized: dict[str, IntWeight] | None = None, quant_kernel: str = "auto") -> Transformer:
    """A :class:`Transformer` holding ``state`` (native keys), in ``dtype`` on ``device``; the linears named in
    ``quantized`` become int4 layers of those weights (``quant_kernel``: see :mod:`puyu.quant.weight_only`)."""
    with torch.device("meta"):
        model = Transformer(config)
    for prefix in quantized or {}:  # a placeholder until the float part has its dtype and device
        parent, _, child = prefix.rpartition(".")
        try:
            linear = model.get_submodule(prefix)
        except AttributeError:
            linear = None
        if not isinstance(linear, nn.Linear):
            raise ModelLoadError(f"quantized layer {prefix} has no place in this model; config and weights come from different models?")
        setattr(model.get_submodule(parent), child, nn.Identity())
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
    model = model.to(device=device, dtype=dtype).eval()
    if quantized:
        apply_int_weights(model, quantized, quant_kernel)
    return model


def load_folder(folder: Path, dtype: torch.dtype, device: torch.device | str, quant_kernel: str = "auto") -> tuple[Transformer, Tokenizer]:
    hf = read_hf_config(folder)
    config, spec = ModelConfig.from_hf(hf), QuantSpec.from_config(hf, str(folder))
    if spec is None:
        check_fits(config, dtype, str(folder))
    state = read_weights(folder)
    quantized = None
    if spec is not None:
        _check_quantizable(config)
        state, quantized = split_state(state, spec)
    model = build_model(config, hf_to_native(state, config), dtype, device, quantized, quant_kernel)
    tokenizer = Tokenizer.from_folder(folder)
    if tokenizer.template is None and BY_ARCH[config.arch].template:  # e.g. InternLM v1 folders publish no template
        tokenizer.set_chat_template(BY_ARCH[config.arch].template)
    return model, tokenizer


def _check_quantizable(config: ModelConfig) -> None:
    if config.arch == "internlm2":  # its packed wqkv would have to be split inside the packed int4 tensors
        raise ModelLoadError("quantized InternLM2 folders are not supported (its wqkv is packed); quantize a Llama, Qwen2 or Mistral model")


def save_pretrained(model: Transformer, tokenizer: Tokenizer, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face folder (see the module docstring)."""
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    return _write_folder(model, tokenizer, Path(folder), native_to_hf(_untie(state, model.config), model.config), dtype or model.dtype)


def save_quantized(model: Transformer, tokenizer: Tokenizer, folder: str | Path, spec: QuantSpec, weights: dict[str, IntWeight]) -> Path:
    """Write a quantized folder: the linears named in ``weights`` in ``spec``'s format, every other tensor in fp16,
    and ``spec``'s ``quantization_config`` in ``config.json`` (``transformers`` and other engines read it)."""
    _check_quantizable(model.config)
    plain = {k: v.detach().cpu() for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in weights}
    state = join_state(native_to_hf(_untie(plain, model.config), model.config), weights, spec)
    return _write_folder(model, tokenizer, Path(folder), state, torch.float16, {"quantization_config": spec.to_config()})


def _untie(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def _write_folder(model: Transformer, tokenizer: Tokenizer, folder: Path, state: dict[str, torch.Tensor], dtype: torch.dtype,
                  extra: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    hf = model.config.to_hf() | (extra or {})
    hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    hf.setdefault("bos_token_id", tokenizer.bos_id)
    hf.setdefault("eos_token_id", tokenizer.eos_id)
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    generation = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.stop_token_ids, **tokenizer.sampling_defaults}
    if tokenizer.sampling_defaults.get("temperature"):
        generation["do_sample"] = True  # transformers samples with the recommended values only when told to
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    tokenizer.save(folder)
    return folder

"""LoRA adapters on disk in PEFT's format, both ways.

A folder holds ``adapter_config.json`` (``peft_type: LORA``, ``r``,
``lora_alpha``, ``target_modules`` ...) and ``adapter_model.safetensors`` whose
keys are ``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight``
- what ``peft.PeftModel.from_pretrained`` loads onto the ``transformers``
model, and what PEFT writes for a Llama-layout model.  Module paths are
puyu's native names, which equal the Hugging Face names for Llama, Mistral
and Qwen2 (InternLM2 fuses q/k/v, so adapters for it do not cross over).

:func:`load_adapter` reads either kind onto a :class:`~puyu.model.Transformer`
and merges it by default (inference then costs nothing extra).  Modules an
adapter carries whole (PEFT's ``modules_to_save``: ``base_model.model.<name>``
tensors; a vision-language model's fine-tuned ``connector``) replace the
model's; for a vision-language model, ``connector.``/``vision.`` names are its
parts in front of the language model (puyu's names, so such an adapter loads
back into puyu, not into PEFT's LLaVA).  An adapter is
a folder, or the name of one saved under ``$PUYU_HOME/adapters/`` (``puyu
agent-tune`` saves ``agent`` there), so ``--adapter agent`` works anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from puyu.errors import ModelLoadError
from puyu.home import home_subdir
from puyu.model.lora import LoraConfig, LoRALinear, add_lora, lora_modules, merge_lora

PREFIX = "base_model.model."
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


def save_adapter(model: nn.Module, folder: str | Path, base_model: str = "", dropout: float = 0.0) -> Path:
    """Write the LoRA layers of ``model`` as a PEFT adapter folder."""
    layers = lora_modules(model)
    if not layers:
        raise ModelLoadError("the model has no LoRA layers to save")
    first = next(iter(layers.values()))
    pairs = {path: (layer.lora_A.weight, layer.lora_B.weight) for path, layer in layers.items()}
    return write_adapter(pairs, folder, first.r, first.alpha, base_model, dropout)


def write_adapter(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], folder: str | Path, r: int, alpha: float,
                  base_model: str = "", dropout: float = 0.0, whole: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``{module path: (A [r, in], B [out, r])}`` as a PEFT adapter folder, with ``whole`` (``{parameter name:
    tensor}``) as modules saved whole."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state: dict[str, torch.Tensor] = {}
    for path, (a, b) in pairs.items():
        state[f"{PREFIX}{path}.lora_A.weight"] = a.detach().float().cpu().contiguous()
        state[f"{PREFIX}{path}.lora_B.weight"] = b.detach().float().cpu().contiguous()
    for name, tensor in (whole or {}).items():
        state[f"{PREFIX}{name}"] = tensor.detach().float().cpu().contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted({p.rsplit(".", 1)[-1] for p in pairs}),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": sorted({name.split(".", 1)[0] for name in whole}) if whole else None,
    }
    save_file(state, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return folder


def adapter_folder(name_or_path: str | Path) -> Path:
    """The folder of an adapter: a path, or a name saved under ``$PUYU_HOME/adapters/`` (see the module docstring)."""
    path = Path(name_or_path).expanduser()
    if path.exists() or len(path.parts) != 1:
        return path
    return home_subdir("adapters") / path


def read_adapter(folder: str | Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """``(adapter_config, {module path: {"A": ..., "B": ...}}, {parameter name: tensor saved whole})`` of a PEFT LoRA
    folder or a saved adapter's name."""
    named = not Path(folder).expanduser().exists() and len(Path(folder).parts) == 1
    folder = adapter_folder(folder)
    if named and not folder.exists():  # a bare name that nothing saved yet: say where names come from
        saved = sorted(p.name for p in folder.parent.iterdir() if not p.name.startswith(".")) if folder.parent.is_dir() else []
        raise ModelLoadError(f"no adapter named {folder.name!r} in {folder.parent} (saved: {', '.join(saved) or 'none'}); "
                             "`puyu train` saves adapters there and `puyu agent-tune` builds the one named 'agent', "
                             "or pass the path of a PEFT LoRA folder")
    if not (folder / CONFIG_FILE).exists() or not (folder / WEIGHTS_FILE).exists():
        raise ModelLoadError(f"{folder} is not a LoRA adapter folder (it needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("peft_type") != "LORA":
        raise ModelLoadError(f"{folder}: adapter type {config.get('peft_type')!r} is not supported; puyu loads LORA adapters")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise ModelLoadError(f"{folder}: per-layer {key} is not supported; use one r and lora_alpha for all layers")
    if config.get("bias", "none") != "none" or config.get("fan_in_fan_out"):
        raise ModelLoadError(f"{folder}: trained biases and fan_in_fan_out are not supported in adapters")
    saved_modules = tuple(config.get("modules_to_save") or ())
    try:
        tensors = load_file(folder / WEIGHTS_FILE)
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"cannot read {folder / WEIGHTS_FILE}: {exc}") from None
    modules: dict[str, dict[str, torch.Tensor]] = {}
    whole: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        name = key.removeprefix(PREFIX).replace(".default.", ".").replace(".modules_to_save.", ".")
        for part in ("A", "B"):
            suffix = f".lora_{part}.weight"
            if name.endswith(suffix):
                modules.setdefault(name[: -len(suffix)], {})[part] = value
                break
        else:
            if not any(name == m or name.startswith(f"{m}.") or f".{m}." in f".{name}" for m in saved_modules):
                raise ModelLoadError(f"{folder}: unexpected tensor {key!r} in the adapter (neither a lora_A/lora_B weight "
                                     "nor part of its modules_to_save)")
            whole[name] = value
    return config, modules, whole


@torch.no_grad()
def load_adapter(model: nn.Module, folder: str | Path, merge: bool = True) -> nn.Module:
    """Put a PEFT LoRA adapter onto ``model`` (merged into the weights unless ``merge=False``).

    Raises:
        ModelLoadError: not a LoRA folder, or its layers or shapes do not fit this model.
    """
    config, modules, whole = read_adapter(folder)
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    if config.get("use_rslora"):
        alpha = alpha * r / r**0.5  # rsLoRA scales by alpha / sqrt(r); LoRALinear uses alpha / r
    names = {n for n, _ in model.named_modules()}
    missing = sorted(p for p in modules if p not in names)
    if missing:
        raise ModelLoadError(f"{folder}: the adapter targets {missing[0]}, which this model does not have; "
                             "was it trained on another base model?")
    add_lora(model, LoraConfig(r=r, alpha=alpha, dropout=0.0), modules=sorted(modules))
    for path, weights in modules.items():
        layer: LoRALinear = model.get_submodule(path)
        for part, target in (("A", layer.lora_A.weight), ("B", layer.lora_B.weight)):
            if part not in weights or tuple(weights[part].shape) != tuple(target.shape):
                got = tuple(weights[part].shape) if part in weights else "nothing"
                raise ModelLoadError(f"{folder}: lora_{part} of {path} has shape {got}, the model needs {tuple(target.shape)}")
            target.copy_(weights[part])
    image_input = getattr(model, "image_input", None)
    for name, tensor in whole.items():
        root = image_input.vlm if image_input is not None and name.startswith(("connector.", "vision.")) else model
        try:
            target = root.get_parameter(name)
        except AttributeError:
            raise ModelLoadError(f"{folder}: the adapter saves {name} whole, which this model does not have; "
                                 "was it trained on another base model?") from None
        if tuple(tensor.shape) != tuple(target.shape):
            raise ModelLoadError(f"{folder}: {name} has shape {tuple(tensor.shape)}, the model needs {tuple(target.shape)}")
        target.copy_(tensor)
    return merge_lora(model) if merge else model

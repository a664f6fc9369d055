"""Load a vision-language model from a Hugging Face folder in transformers' format.

``load_vlm(folder, dtype="auto", device="auto") -> (VisionLanguageModel, Tokenizer, ImageProcessor)``

The folder is what ``save_pretrained`` of ``LlavaForConditionalGeneration``, ``InternVLForConditionalGeneration``
or ``Idefics3ForConditionalGeneration`` writes, or a Hub release in that format (llava-hf/llava-1.5-7b-hf,
OpenGVLab/InternVL3-1B-hf, HuggingFaceTB/SmolVLM-256M-Instruct ...): ``config.json``, safetensors (sharded or
not), the tokenizer and the image processor's settings.  Files are read with :mod:`puyu.model.hf_io`; the
language model is built by its ``build_model`` (so its key map, tied embeddings and shape checks are the text
models'), after the names below move each tensor to its part:

- LLaVA and InternVL (transformers converts InternVL to LLaVA's layout): ``vision_tower.`` (Hub releases add
  ``vision_model.``) -> ``vision.``; ``multi_modal_projector.`` -> ``connector.``; ``language_model.model.`` ->
  ``language_model.model.``; ``language_model.lm_head.`` -> ``language_model.lm_head.``.  transformers 5's
  in-memory names (``model.vision_tower.``, ``model.multi_modal_projector.``, ``model.language_model.``,
  ``lm_head.``) map to the same parts.
- Idefics3: ``model.vision_model.`` -> ``vision.``; ``model.connector.modality_projection.proj.`` ->
  ``connector.linear_1.``; ``model.text_model.`` -> ``language_model.model.``; ``lm_head.`` -> ``language_model.lm_head.``.

InternViT's own names become the tower's (:data:`INTERNVIT_RENAMES`; its CLS and position tensors drop their
leading unit axes).  Tensors no computation reads are dropped: the tower layers after the selected features,
CLIP's pooling ``post_layernorm`` and ``position_ids`` buffer, InternViT's ``mask_token``.  Anything else that
does not fit is a :class:`~puyu.errors.ModelLoadError`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from puyu.errors import ModelLoadError
from puyu.hardware import resolve_device, resolve_dtype
from puyu.model.estimate import check_fits
from puyu.model.hf_io import build_model, read_hf_config, read_weights
from puyu.model.keymaps import hf_to_native
from puyu.model.vlm.composition import VisionLanguageModel
from puyu.model.vlm.config import VLMConfig
from puyu.model.vlm.processors import ImageProcessor, build_processor
from puyu.tokenizer import Tokenizer

_LLAVA_PREFIXES = [
    (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?", "vision."),
    (r"^(?:model\.)?multi_modal_projector\.", "connector."),
    (r"^language_model\.model\.", "language_model.model."),
    (r"^model\.language_model\.", "language_model.model."),
    (r"^(?:language_model\.)?lm_head\.", "language_model.lm_head."),
]
PREFIXES = {
    "llava": _LLAVA_PREFIXES,
    "internvl": _LLAVA_PREFIXES,  # transformers converts InternVL with LLaVA's layout
    "idefics3": [
        (r"^model\.vision_model\.", "vision."),
        (r"^model\.connector\.modality_projection\.proj\.", "connector.linear_1."),
        (r"^model\.text_model\.", "language_model.model."),
        (r"^lm_head\.", "language_model.lm_head."),
    ],
}
# (InternViT name part, tower name part), applied in order to the names under ``vision.``.
INTERNVIT_RENAMES = [
    (r"^embeddings\.patch_embeddings\.projection\.", "embeddings.patch_embedding."),
    (r"^embeddings\.cls_token$", "embeddings.class_embedding"),
    (r"^embeddings\.position_embeddings$", "embeddings.position_embedding.weight"),
    (r"^encoder\.layer\.", "encoder.layers."),
    (r"\.layernorm_before\.", ".layer_norm1."),
    (r"\.layernorm_after\.", ".layer_norm2."),
    (r"\.attention\.projection_layer\.", ".self_attn.out_proj."),
    (r"\.attention\.", ".self_attn."),
    (r"^layernorm\.", "post_layernorm."),
]
_UNUSED = {"clip": r"^(post_layernorm\.|embeddings\.position_ids$)", "internvit": r"^embeddings\.mask_token$"}


def split_state(state: dict[str, torch.Tensor], config: VLMConfig) -> dict[str, dict[str, torch.Tensor]]:
    """Checkpoint tensors -> ``{"vision": ..., "connector": ..., "language_model": ...}`` in each part's own names
    (the language model's still in the checkpoint layout of its ``arch``, for :func:`hf_to_native`)."""
    parts: dict[str, dict[str, torch.Tensor]] = {"vision": {}, "connector": {}, "language_model": {}}
    unknown = []
    for key, value in state.items():
        pattern = next((p for p in PREFIXES[config.family] if re.match(p[0], key)), None)
        if pattern is None:
            unknown.append(key)
            continue
        part, _, name = re.sub(pattern[0], pattern[1], key, count=1).partition(".")
        parts[part][name] = value
    if unknown:
        raise ModelLoadError(f"tensors {unknown[:3]}{'...' if len(unknown) > 3 else ''} have no place in a {config.family} model; "
                             "is this folder in transformers' format?")
    parts["vision"] = _tower_state(parts["vision"], config)
    return parts


def _tower_state(state: dict[str, torch.Tensor], config: VLMConfig) -> dict[str, torch.Tensor]:
    kind, out = config.vision.kind, {}
    for key, value in state.items():
        if kind == "internvit":
            for old, new in INTERNVIT_RENAMES:
                key = re.sub(old, new, key)
            if key == "embeddings.class_embedding":
                value = value.reshape(-1)  # [1, 1, D] -> [D]
            elif key == "embeddings.position_embedding.weight":
                value = value.reshape(-1, value.shape[-1])  # [1, P, D] -> [P, D]
        layer = re.match(r"^encoder\.layers\.(\d+)\.", key)
        unused = kind in _UNUSED and re.match(_UNUSED[kind], key)
        if unused or (layer and int(layer.group(1)) >= config.layers_used):
            continue
        out[key] = value
    return out


def _load_part(module: nn.Module, state: dict[str, torch.Tensor], what: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(f"the {what} weights do not fit the config: missing {missing[:3]}, unexpected {unexpected[:3]}; "
                             "config and weights come from different models?")
    for name, param in expected.items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise ModelLoadError(f"{what} tensor {name} has shape {tuple(state[name].shape)}, the config expects {tuple(param.shape)}")
    module.load_state_dict(state, assign=True)
    return module.to(device=device, dtype=dtype)


def _tokens(folder: Path, tokenizer: Tokenizer, config: VLMConfig) -> dict[str, str]:
    """The strings of the image placeholders: the image token by its id, InternVL's frame tokens from the tokenizer config."""
    image = tokenizer.backend.id_to_token(config.image_token_id)
    if image is None:
        raise ModelLoadError(f"the tokenizer has no token {config.image_token_id} (the config's image token); "
                             "tokenizer and model come from different releases?")
    path = folder / "tokenizer_config.json"
    settings = json.loads(path.read_text()) if path.exists() else {}
    named = settings.get("extra_special_tokens") if isinstance(settings.get("extra_special_tokens"), dict) else {}
    tokens = {"image": image}
    for key in ("start_image", "end_image"):
        value = settings.get(f"{key}_token", named.get(f"{key}_token"))
        if value:
            tokens[key] = value
    return tokens


def load_vlm(folder: str | Path, dtype: str | torch.dtype | None = "auto",
             device: str | torch.device | None = "auto") -> tuple[VisionLanguageModel, Tokenizer, ImageProcessor]:
    """A vision-language model folder -> ``(model, tokenizer, processor)`` (see the module docstring).

    Args:
        dtype: ``auto`` (see :mod:`puyu.hardware`), ``float32``, ``bfloat16`` or ``float16``; the whole model takes it.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ModelLoadError: missing or damaged files, an unsupported layout, weights that do not fit the config.
        ConfigError: a bad dtype or device.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is not a folder; give a Hugging Face vision-language model folder")
    hf = read_hf_config(folder)
    if hf.get("quantization_config"):
        raise ModelLoadError(f"{folder} is quantized; puyu loads vision-language models from float weights only "
                             "(use the unquantized release)")
    config = VLMConfig.from_hf(hf)
    check_fits(config.text, dt, str(folder))
    parts = split_state(read_weights(folder), config)
    with torch.device("meta"):
        model = VisionLanguageModel(config)
    model.vision = _load_part(model.vision, parts["vision"], "vision tower", dt, dev)
    model.connector = _load_part(model.connector, parts["connector"], "connector", dt, dev)
    model.language_model = build_model(config.text, hf_to_native(parts["language_model"], config.text), dt, dev)
    tokenizer = Tokenizer.from_folder(folder)
    return model.eval(), tokenizer, build_processor(config, _image_settings(folder), _tokens(folder, tokenizer, config))


def _image_settings(folder: Path) -> dict:
    """The image processor's settings: ``preprocessor_config.json`` (Hub releases), else the ``image_processor`` entry of
    ``processor_config.json`` (where transformers 5 saves them), else ``{}`` (the family's defaults)."""
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = folder / name
        if not path.exists():
            continue
        try:
            settings = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or re-download it") from None
        if key is None or key in settings:
            return settings if key is None else settings[key]
    return {}

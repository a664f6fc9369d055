"""Vision-language model configuration, read from a Hugging Face ``config.json``.

``VLMConfig.from_hf(dict)`` reads the three layouts transformers saves (and publishes on the Hub):

- ``LlavaForConditionalGeneration`` (``llava``): CLIP ViT (``clip_vision_model``); connector linear, act, linear.
- ``InternVLForConditionalGeneration`` (``internvl``): InternViT (``internvl_vision``); connector pixel shuffle,
  LayerNorm, linear, act, linear.
- ``Idefics3ForConditionalGeneration`` (``idefics3``, also SmolVLM v1): SigLIP (``idefics3_vision``); connector
  pixel shuffle, one linear.

The language model is any ``text_config`` :class:`~puyu.model.config.ModelConfig` reads (Llama, Qwen2 ...).
Each family's feature selection follows its transformers class: ``vision_feature_layer`` indexes the tower's
hidden states ``[embeddings, layer 1, ..., layer N]`` (-1 is the last layer followed by the tower's final norm,
where it has one), ``vision_feature_select_strategy="default"`` drops the CLS position.  Values these classes
accept but puyu does not compute raise :class:`~puyu.errors.ModelLoadError` naming the key.  Keys a sub-config
omits take transformers' defaults for its ``model_type`` (configs saved with ``use_diff`` leave them out).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from puyu.errors import ModelLoadError
from puyu.model.config import ModelConfig

FAMILIES = {"LlavaForConditionalGeneration": "llava", "InternVLForConditionalGeneration": "internvl",
            "Idefics3ForConditionalGeneration": "idefics3"}
# The remote-code layouts of the same models, and what to do with them.
REMOTE_CODE = {"InternVLChatModel": "load the transformers-format release instead (the OpenGVLab/<name>-hf repository), "
                                    "or convert it with transformers' convert_internvl_weights_to_hf.py",
               "LlavaLlamaForCausalLM": "load the transformers-format release instead (llava-hf/<name>-hf)"}
# transformers' default of ``tie_word_embeddings`` per family (LlavaConfig also ties when its text config does).
_TIE_DEFAULT = {"llava": False, "internvl": True, "idefics3": False}
_IMAGE_TOKEN_DEFAULT = {"llava": 32000, "internvl": 151667, "idefics3": 128257}
# Each family's (text, vision) model_type, and transformers' defaults of the shape keys: a config saved with
# ``use_diff`` omits values equal to them (llava-hf/llava-1.5-7b-hf's text_config states no shape at all).
_SUB_TYPES = {"llava": ("llama", "clip_vision_model"), "internvl": ("qwen2", "internvl_vision"), "idefics3": ("llama", "idefics3_vision")}
DEFAULTS = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  max_position_embeddings=2048),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32, num_attention_heads=32,
                  max_position_embeddings=32768),
    "clip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
                              patch_size=32, layer_norm_eps=1e-5, hidden_act="quick_gelu"),
    "internvl_vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=448,
                            patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu"),
    "idefics3_vision": dict(hidden_size=1152, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=16, image_size=224,
                            patch_size=32, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"),
}


@dataclass(frozen=True)
class VisionConfig:
    """A pre-norm ViT encoder: CLIP, InternViT and SigLIP differ only in the flags below.

    Attributes:
        kind: ``clip``, ``internvit`` or ``siglip`` (the checkpoint's naming and position scheme).
        hidden_size, intermediate_size, num_layers, num_heads: encoder shape.
        image_size: side of the square input the position embeddings were trained for.
        patch_size: side of one patch (the stride of the patch convolution).
        layer_norm_eps: epsilon of the encoder's norms.
        hidden_act: MLP activation (``quick_gelu``, ``gelu``, ``gelu_pytorch_tanh`` ...).
        class_token: a CLS embedding precedes the patches (CLIP, InternViT).
        patch_bias: the patch convolution has a bias.
        pre_norm: a LayerNorm after the embeddings (CLIP's ``pre_layrnorm``).
        final_norm: a norm after the last layer, part of the last hidden state (SigLIP; InternViT without mean pooling).
        qkv_bias: q/k/v projections have biases.
        norm_type: ``layer_norm`` or ``rms_norm`` (InternViT-6B).
        qk_norm: RMSNorm over the whole query and key vectors before the heads split (InternViT-6B).
        layer_scale: per-channel scales ``lambda_1``/``lambda_2`` on both residual branches (InternViT).
    """

    kind: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    layer_norm_eps: float
    hidden_act: str
    class_token: bool
    patch_bias: bool
    pre_norm: bool
    final_norm: bool
    qkv_bias: bool = True
    norm_type: str = "layer_norm"
    qk_norm: bool = False
    layer_scale: bool = False

    @property
    def grid(self) -> int:
        """Patches along one side of the input."""
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class VLMConfig:
    """A vision tower, a connector and a language model.

    Attributes:
        family: ``llava``, ``internvl`` or ``idefics3``.
        vision: the tower.
        text: the language model (its ``tie_word_embeddings`` as the family's transformers class decides it).
        image_token_id: the placeholder token whose embeddings image features replace.
        feature_layers: hidden-state indices whose features are concatenated (-1: last layer plus final norm).
        drop_cls: drop the CLS position from the selected features.
        shuffle: pixel-shuffle factor (1: none; 2 merges 2x2 neighbouring patches into one token).
        projector_act: activation between the two connector linears (None: one linear).
        projector_norm: a LayerNorm before the connector's first linear (InternVL).
        projector_bias: the connector's linears have biases.
    """

    family: str
    vision: VisionConfig
    text: ModelConfig
    image_token_id: int
    feature_layers: tuple[int, ...]
    drop_cls: bool
    shuffle: int
    projector_act: str | None
    projector_norm: bool
    projector_bias: bool

    @property
    def tokens_per_tile(self) -> int:
        """Image placeholder tokens one tile (one pixel tensor) fills."""
        patches = self.vision.grid**2 + int(self.vision.class_token and not self.drop_cls)
        return patches // self.shuffle**2

    @property
    def layers_used(self) -> int:
        """Encoder layers the selected features depend on (the layers after the deepest one are not computed)."""
        return max(i % (self.vision.num_layers + 1) for i in self.feature_layers)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "VLMConfig":
        """Build from a Hugging Face ``config.json`` dict of one of :data:`FAMILIES`.

        Raises:
            ModelLoadError: not a supported vision-language layout, a missing key or an unsupported value.
        """
        names = hf.get("architectures") or []
        family = next((FAMILIES[n] for n in names if n in FAMILIES), None)
        family = family or (hf.get("model_type") if hf.get("model_type") in FAMILIES.values() else None)
        if family is None:
            remote = next((n for n in names if n in REMOTE_CODE), None)
            if remote:
                raise ModelLoadError(f"{remote} is the remote-code layout, which puyu does not run; {REMOTE_CODE[remote]}")
            shown = ", ".join(names) or hf.get("model_type") or "none given"
            raise ModelLoadError(f"{shown} is not a vision-language layout puyu runs ({', '.join(FAMILIES)}); "
                                 "use a LLaVA-1.5, InternVL (-hf) or SmolVLM/Idefics3 folder")
        try:
            return _parse(hf, family)
        except KeyError as exc:
            raise ModelLoadError(f"config.json is missing the key {exc.args[0]!r} of a {family} model") from None


def is_vision_language(hf: dict[str, Any]) -> bool:
    """Whether a ``config.json`` dict describes a vision-language model (one puyu runs or not: the loader then says which)."""
    names = hf.get("architectures") or []
    return any(n in FAMILIES or n in REMOTE_CODE for n in names) or hf.get("model_type") in FAMILIES.values() or "vision_config" in hf


def _parse(hf: dict[str, Any], family: str) -> VLMConfig:
    text_type, vision_type = _SUB_TYPES[family]
    text_hf, vision_hf = _with_defaults(hf["text_config"], text_type), _with_defaults(hf["vision_config"], vision_type)
    text = ModelConfig.from_hf(text_hf)
    tied = bool(hf.get("tie_word_embeddings", _TIE_DEFAULT[family]))
    if family == "llava":
        tied = tied or bool(text_hf.get("tie_word_embeddings", False))
    text = replace(text, tie_word_embeddings=tied)
    vision = _vision(vision_hf, family)
    if family == "idefics3":
        layers, drop_cls, shuffle = (-1,), False, int(hf.get("scale_factor", 2))
        act, norm, bias = None, False, False
    else:
        layer = hf.get("vision_feature_layer", -2 if family == "llava" else -1)
        layers = tuple(layer) if isinstance(layer, list) else (int(layer),)
        strategy = hf.get("vision_feature_select_strategy", "default")
        if strategy not in ("default", "full"):
            raise ModelLoadError(f"config.json: vision_feature_select_strategy {strategy!r} is not one of default, full")
        drop_cls = strategy == "default"
        act, norm = hf.get("projector_hidden_act", "gelu"), family == "internvl"
        bias = bool(hf.get("multimodal_projector_bias", True))
        shuffle = 1
        if family == "internvl":
            ratio = float(hf.get("downsample_ratio", 0.5))
            shuffle = round(1 / ratio)
            if abs(shuffle * ratio - 1) > 1e-6:
                raise ModelLoadError(f"config.json: downsample_ratio {ratio} is not 1/n for an integer n")
            if len(layers) != 1:
                raise ModelLoadError("config.json: InternVL selects one vision_feature_layer, not a list")
    for layer in layers:
        if not -vision.num_layers - 1 <= layer <= vision.num_layers:
            raise ModelLoadError(f"config.json: vision_feature_layer {layer} is outside the tower's {vision.num_layers} layers")
    token = hf.get("image_token_id", hf.get("image_token_index", _IMAGE_TOKEN_DEFAULT[family]))
    config = VLMConfig(family=family, vision=vision, text=text, image_token_id=int(token),
                       feature_layers=layers, drop_cls=drop_cls and vision.class_token, shuffle=shuffle,
                       projector_act=act, projector_norm=norm, projector_bias=bias)
    if shuffle > 1 and (vision.grid % shuffle or config.drop_cls != vision.class_token):
        raise ModelLoadError(f"config.json: the {vision.grid}x{vision.grid} patch grid cannot be pixel-shuffled by {shuffle} "
                             "(the grid must be divisible by it and a CLS position dropped)")
    return config


def _with_defaults(sub: dict[str, Any], model_type: str) -> dict[str, Any]:
    model_type = sub.get("model_type", model_type)
    return {**DEFAULTS.get(model_type, {}), "model_type": model_type, **sub}


def _vision(v: dict[str, Any], family: str) -> VisionConfig:
    size, patch = _square(v["image_size"], "image_size"), _square(v["patch_size"], "patch_size")
    if size % patch:
        raise ModelLoadError(f"config.json: vision image_size {size} is not a multiple of patch_size {patch}")
    if int(v.get("num_channels", 3)) != 3:
        raise ModelLoadError("config.json: the vision tower must take 3-channel (RGB) images")
    common = dict(hidden_size=int(v["hidden_size"]), intermediate_size=int(v["intermediate_size"]), num_layers=int(v["num_hidden_layers"]),
                  num_heads=int(v["num_attention_heads"]), image_size=size, patch_size=patch,
                  layer_norm_eps=float(v["layer_norm_eps"]), hidden_act=v["hidden_act"])
    if family == "llava":
        if v["model_type"] != "clip_vision_model":
            raise ModelLoadError(f"config.json: LLaVA with a {v['model_type']!r} tower is not supported; puyu runs CLIP towers")
        return VisionConfig(kind="clip", **common, class_token=True, patch_bias=False, pre_norm=True, final_norm=False)
    if family == "internvl":
        norm_type = v.get("norm_type", "layer_norm")
        if norm_type not in ("layer_norm", "rms_norm"):
            raise ModelLoadError(f"config.json: vision norm_type {norm_type!r} is not one of layer_norm, rms_norm")
        if not v.get("use_absolute_position_embeddings", True):
            raise ModelLoadError("config.json: InternViT without absolute position embeddings is not supported")
        return VisionConfig(kind="internvit", **common, class_token=True, patch_bias=True, pre_norm=False,
                            final_norm=not v.get("use_mean_pooling", True), qkv_bias=bool(v.get("attention_bias", False)),
                            norm_type=norm_type, qk_norm=bool(v.get("use_qk_norm", False)), layer_scale=True)
    return VisionConfig(kind="siglip", **common, class_token=False, patch_bias=True, pre_norm=False, final_norm=True)


def _square(value: int | list[int], key: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ModelLoadError(f"config.json: vision {key} {value} is not square; puyu runs square towers")
        value = value[0]
    return int(value)

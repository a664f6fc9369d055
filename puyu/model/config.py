"""The model configuration: one dataclass for every Llama-family layout puyu runs.

``ModelConfig.from_hf(dict)`` reads a Hugging Face ``config.json`` of any
architecture in :mod:`puyu.model.architectures` (InternLM v1/2/2.5/3, Qwen2/2.5/3,
Llama 1-3.x, Mistral; both the ``rope_theta``/``rope_scaling`` keys of
transformers 4 and the ``rope_parameters`` key of transformers 5), and
``to_hf()`` writes one back in the layout of ``arch``, so a saved folder loads in
``transformers`` (or in the family's own remote code).  Bad values raise
:class:`~puyu.errors.ModelLoadError` naming the key; an unsupported
``architectures`` entry names the supported ones.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from puyu.errors import ModelLoadError
from puyu.model.architectures import BY_ARCH, BY_HF_CLASS, BY_MODEL_TYPE, supported_list

log = logging.getLogger(__name__)

# HF class name -> puyu arch, and model_type -> arch.  The arch decides the weight key map and the
# config layout written back on save.
HF_ARCHITECTURES = {name: a.arch for name, a in BY_HF_CLASS.items()}
MODEL_TYPES = {name: a.arch for name, a in BY_MODEL_TYPE.items()}
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclass
class ModelConfig:
    """Shape and numerics of a Llama-family decoder.

    Attributes:
        arch: weight/config layout, a key of :data:`puyu.model.architectures.BY_ARCH` (``llama``, ``qwen3``, ``internlm2`` ...).
        vocab_size: rows of the embedding and the LM head.
        hidden_size: model width.
        intermediate_size: SwiGLU inner width.
        num_layers: decoder blocks.
        num_heads: query heads.
        num_kv_heads: key/value heads (``< num_heads`` is grouped-query attention).
        head_dim: width of one head (usually ``hidden_size // num_heads``).
        rms_norm_eps: epsilon of every RMSNorm.
        rope_theta: RoPE base.
        rope_scaling: ``None`` or a dict with ``rope_type`` in ``ROPE_TYPES`` and its parameters.
        max_position_embeddings: context length the model was trained for.
        tie_word_embeddings: the LM head shares the embedding matrix.
        qkv_bias: q/k/v projections have a bias (Qwen2, InternLM v1, InternLM2 with ``bias``, InternLM3 with ``qkv_bias``).
        o_bias: the output projection has a bias.
        mlp_bias: the SwiGLU projections have biases.
        qk_norm: an RMSNorm over each query and key head before RoPE (Qwen3).
    """

    arch: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in BY_ARCH:
            raise ModelLoadError(f"unsupported architecture {self.arch!r}; puyu runs {', '.join(BY_ARCH)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
            if int(getattr(self, name)) <= 0:
                raise ModelLoadError(f"model config: {name} must be positive, got {getattr(self, name)}")
        self.qk_norm = self.qk_norm or self.arch == "qwen3"  # Qwen3's layout always has them (also when read from GGUF)
        if self.num_heads % self.num_kv_heads:
            raise ModelLoadError(
                f"model config: num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if kind not in ROPE_TYPES:
                raise ModelLoadError(f"model config: rope scaling {kind!r} is not supported; puyu supports {', '.join(ROPE_TYPES)}")
            self.rope_scaling = {**{k: v for k, v in self.rope_scaling.items() if k not in ("type", "rope_theta")}, "rope_type": kind}
            if kind == "default":
                self.rope_scaling = None

    @property
    def kv_groups(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Build from a Hugging Face ``config.json`` dict.

        Raises:
            ModelLoadError: unknown architecture or a missing key.
        """
        names = hf.get("architectures") or []
        arch = next((HF_ARCHITECTURES[n] for n in names if n in HF_ARCHITECTURES), None)
        arch = arch or MODEL_TYPES.get(hf.get("model_type", ""))
        if arch is None:
            shown = ", ".join(names) or hf.get("model_type") or "none given"
            raise ModelLoadError(f"unsupported architecture ({shown}); puyu runs {supported_list()} "
                                 "- `puyu models` lists them; pick a model of one of these")
        try:
            heads = int(hf["num_attention_heads"])
            hidden = int(hf["hidden_size"])
            theta, scaling = _rope(hf, arch)
            qkv_bias, o_bias, mlp_bias = _biases(hf, arch)
            return cls(
                arch=arch,
                vocab_size=int(hf["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(hf["intermediate_size"]),
                num_layers=int(hf["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(hf.get("num_key_value_heads") or heads),
                head_dim=int(hf.get("head_dim") or hidden // heads),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                rope_theta=theta,
                rope_scaling=scaling,
                max_position_embeddings=_context(hf, arch),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                qkv_bias=qkv_bias,
                o_bias=o_bias,
                mlp_bias=mlp_bias,
                extra={k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "sliding_window") if hf.get(k) is not None},
            )
        except KeyError as exc:
            raise ModelLoadError(f"config.json is missing the key {exc.args[0]!r}; is this a causal LM config?") from None

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dict for ``arch`` that ``transformers`` (or the family's own code) loads."""
        hf: dict[str, Any] = {
            "architectures": [BY_ARCH[self.arch].hf_class],
            "model_type": BY_ARCH[self.arch].model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
        }
        same = {"llama": "the llama layout biases q, k, v and o together; save this model as qwen2",
                "mistral": "the mistral layout biases q, k, v and o together; save this model as qwen2",
                "qwen3": "the qwen3 layout biases q, k, v and o together",
                "internlm": "the internlm layout biases q, k, v and o together",
                "internlm2": "the internlm2 layout biases wqkv and wo together"}
        if self.arch in same and self.qkv_bias != self.o_bias:
            raise ModelLoadError(same[self.arch])
        if self.arch in ("internlm", "internlm2"):
            hf["bias"] = self.qkv_bias
        elif self.arch == "internlm3":
            if self.o_bias != self.mlp_bias:
                raise ModelLoadError("the internlm3 layout biases o_proj and the MLP together")
            hf["qkv_bias"], hf["bias"] = self.qkv_bias, self.o_bias
        elif self.arch in ("llama", "mistral", "qwen3"):
            hf["attention_bias"] = self.qkv_bias
            hf["mlp_bias"] = self.mlp_bias
        if self.arch == "internlm":
            kind = (self.rope_scaling or {}).get("rope_type", "default")
            if kind not in ("default", "dynamic"):
                raise ModelLoadError(f"the internlm layout has origin or dynamic RoPE, not {kind}")
            hf["rotary"] = {"base": self.rope_theta, "type": "origin" if kind == "default" else "dynamic",
                            "scaling_factor": (self.rope_scaling or {}).get("factor", 1.0)}
            del hf["rope_theta"], hf["rope_scaling"]
        hf.update(self.extra)
        return hf

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (for logs and run records)."""
        return asdict(self)


def _biases(hf: dict[str, Any], arch: str) -> tuple[bool, bool, bool]:
    """``(q/k/v, o_proj, MLP)`` biases as each family's modeling code decides them."""
    if arch in ("internlm", "internlm2"):
        bias = bool(hf.get("bias", arch == "internlm"))  # InternLMConfig defaults to True, InternLM2Config to False
        return bias, bias, False
    if arch == "internlm3":
        bias = bool(hf.get("bias", False))
        return bool(hf.get("qkv_bias", False)), bias, bias
    attention = bool(hf.get("attention_bias", False))
    return arch == "qwen2" or attention, attention, bool(hf.get("mlp_bias", False))


def _rope(hf: dict[str, Any], arch: str) -> tuple[float, dict[str, Any] | None]:
    """``(rope_theta, rope_scaling)`` from transformers 4 keys, transformers 5 ``rope_parameters`` or InternLM's ``rotary``."""
    if arch == "internlm" and "rotary" in hf:
        rotary = hf["rotary"]
        if rotary.get("type", "origin") not in ("origin", "dynamic"):
            raise ModelLoadError(f"config.json: rotary type {rotary.get('type')!r} is not one of origin, dynamic")
        scaling = {"rope_type": "dynamic", "factor": float(rotary.get("scaling_factor", 1.0))} if rotary.get("type") == "dynamic" else None
        return float(rotary.get("base", 10000.0)), scaling
    rope = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), dict(scaling) if scaling else None


def _context(hf: dict[str, Any], arch: str) -> int:
    """The context length: ``max_position_embeddings``, capped at an active sliding window (see the architectures)."""
    length = int(hf.get("max_position_embeddings", 4096))
    window = hf.get("sliding_window")
    active = (arch == "mistral" or (arch in ("qwen2", "qwen3") and hf.get("use_sliding_window"))) and window
    if active and int(window) < length:
        log.warning("sliding-window attention (%d tokens) is not computed: the context is capped at %d tokens", window, window)
        return int(window)
    return length

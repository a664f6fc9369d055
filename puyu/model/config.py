"""The model configuration: one dataclass for every Llama-family layout puyu runs.

``ModelConfig.from_hf(dict)`` reads a Hugging Face ``config.json`` (Llama,
Mistral, Qwen2, InternLM2; both the ``rope_theta``/``rope_scaling`` keys of
transformers 4 and the ``rope_parameters`` key of transformers 5), and
``to_hf()`` writes one back in the layout of ``arch``, so a saved folder loads in
``transformers``.  Bad values raise :class:`~puyu.errors.ModelLoadError` naming
the key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from puyu.errors import ModelLoadError

# HF class name -> puyu arch.  The arch decides the weight key map and the
# config layout written back on save.
HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "InternLM2ForCausalLM": "internlm2",
}
MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "internlm2": "internlm2"}
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclass
class ModelConfig:
    """Shape and numerics of a Llama-family decoder.

    Attributes:
        arch: weight/config layout: ``llama``, ``mistral``, ``qwen2`` or ``internlm2``.
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
        qkv_bias: q/k/v projections have a bias (Qwen2, InternLM2 with ``bias``).
        o_bias: the output projection has a bias.
        mlp_bias: the SwiGLU projections have biases.
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
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in MODEL_TYPES:
            raise ModelLoadError(f"unsupported architecture {self.arch!r}; puyu runs {', '.join(MODEL_TYPES)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
            if int(getattr(self, name)) <= 0:
                raise ModelLoadError(f"model config: {name} must be positive, got {getattr(self, name)}")
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
            raise ModelLoadError(
                f"unsupported architecture ({shown}); puyu runs {', '.join(HF_ARCHITECTURES)} "
                "- convert the model to one of these or pick another model"
            )
        try:
            heads = int(hf["num_attention_heads"])
            hidden = int(hf["hidden_size"])
            rope = dict(hf.get("rope_parameters") or {})
            scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
            if arch == "mistral" and hf.get("sliding_window") and hf["sliding_window"] < hf.get("max_position_embeddings", 0):
                raise ModelLoadError(
                    f"sliding-window attention ({hf['sliding_window']}) is not supported; "
                    "set max_position_embeddings to the window or use a model without it"
                )
            bias = bool(hf.get("bias", False))
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
                rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                rope_scaling=dict(scaling) if scaling else None,
                max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                qkv_bias=arch == "qwen2" or bool(hf.get("attention_bias", False)) or bias,
                o_bias=bool(hf.get("attention_bias", False)) or bias,
                mlp_bias=bool(hf.get("mlp_bias", False)),
                extra={k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in hf},
            )
        except KeyError as exc:
            raise ModelLoadError(f"config.json is missing the key {exc.args[0]!r}; is this a causal LM config?") from None

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dict for ``arch`` that ``transformers`` loads."""
        hf: dict[str, Any] = {
            "architectures": [k for k, v in HF_ARCHITECTURES.items() if v == self.arch],
            "model_type": MODEL_TYPES[self.arch],
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
        if self.arch == "internlm2":
            hf["bias"] = self.qkv_bias
        elif self.arch in ("llama", "mistral"):
            if self.qkv_bias != self.o_bias:
                raise ModelLoadError("the llama layout biases q, k, v and o together; save this model as qwen2")
            hf["attention_bias"] = self.qkv_bias
            hf["mlp_bias"] = self.mlp_bias
        hf.update(self.extra)
        return hf

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (for logs and run records)."""
        return asdict(self)

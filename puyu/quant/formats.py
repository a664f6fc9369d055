"""Integer weights of a quantized linear layer, and the two standard folder formats that hold them.

:class:`IntWeight` is what every method here (RTN, AWQ, GPTQ) produces and every format stores: 4-bit codes
``q`` ``[out, in]`` in 0..15 and, per group of input channels and per output channel, an fp16 ``scale`` and an
integer ``zero``: ``w[o, i] = (q[o, i] - zero[g, o]) * scale[g, o]`` with ``g = g_idx[i]`` (``i // group_size``
unless GPTQ's act-order permuted the groups).

The formats (tensors under each quantized linear's prefix, e.g. ``model.layers.0.mlp.up_proj.``):

* AWQ, AutoAWQ's GEMM layout (``quant_method: awq``, ``version: gemm``, ``zero_point: true``): ``qweight`` int32
  ``[in, out/8]`` and ``qzeros`` int32 ``[groups, out/8]`` pack 8 codes per int32 along the output channels in
  AWQ's order ``[0, 2, 4, 6, 1, 3, 5, 7]`` (nibble ``k``, bits ``4k..4k+3``, holds channel ``8c + order[k]``);
  ``scales`` fp16 ``[groups, out]``.  Groups are contiguous.
* GPTQ (``quant_method: gptq``; AutoGPTQ/GPTQModel ``checkpoint_format: gptq``): ``qweight`` int32 ``[in/8, out]``
  packs input channels ``8r..8r+7`` into row ``r`` (nibble ``k``: channel ``8r + k``); ``qzeros`` int32
  ``[groups, out/8]`` packs output channels in natural order and stores ``zero - 1`` (the v1 convention;
  ``gptq_v2`` stores ``zero``); ``scales`` fp16 ``[groups, out]``; ``g_idx`` int32 ``[in]``.  ``sym: true`` means
  every zero is 8; ``desc_act: true`` (act-order) means ``g_idx`` is not ``i // group_size``.

Biases stay ``bias`` (fp16); every other tensor of the folder is a plain fp16 tensor.  :class:`QuantSpec` reads and
writes the ``quantization_config`` of ``config.json``; anything else found there is a
:class:`~puyu.errors.ModelLoadError` that names what puyu loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from puyu.errors import ConfigError, ModelLoadError

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
NATURAL_ORDER = tuple(range(8))
FORMATS = ("awq", "gptq")
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64)


@dataclass
class IntWeight:
    """One quantized linear: ``codes`` ``[out, in]`` uint8, ``scale`` ``[groups, out]`` fp16, ``zero`` ``[groups, out]``
    uint8, ``g_idx`` ``[in]`` int32, and the layer's ``bias`` (see the module docstring for the formula)."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor
    bias: torch.Tensor | None = None

    @property
    def group_size(self) -> int:
        return self.codes.shape[1] // self.scale.shape[0]

    @property
    def act_order(self) -> bool:
        """Whether the groups are not contiguous runs of input channels."""
        return not torch.equal(self.g_idx.cpu(), contiguous_groups(self.codes.shape[1], self.group_size))

    def rows(self, start: int, end: int, bias: torch.Tensor | None = None) -> "IntWeight":
        """Output channels ``start:end`` (with ``bias``): one layer of weights quantized together with others."""
        return IntWeight(self.codes[start:end].clone(), self.scale[:, start:end].clone(), self.zero[:, start:end].clone(),
                         self.g_idx.clone(), bias)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight ``[out, in]``."""
        g = self.g_idx.long()
        return ((self.codes.to(dtype) - self.zero.to(dtype)[g].t()) * self.scale.to(dtype)[g].t()).contiguous()


def contiguous_groups(in_features: int, group_size: int) -> torch.Tensor:
    """``g_idx`` of groups that are runs of ``group_size`` input channels."""
    return torch.arange(in_features, dtype=torch.int32) // group_size


def fit_groups(w: torch.Tensor, sym: bool, min_zero: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero of each row of ``w`` ``[..., group_size]``, as GPTQ's quantizer fits them: the range always
    includes 0; ``sym`` puts zero at 8.  The scale is rounded to fp16 (what the formats store) before the zero.

    Returns:
        ``scale`` float32 and ``zero`` float32 holding integers, both ``w.shape[:-1]``.
    """
    low, high = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
    if sym:
        high = torch.maximum(-low, high)
        low = -high
    flat = (high - low) == 0
    low, high = torch.where(flat, -1.0, low), torch.where(flat, 1.0, high)
    scale = ((high - low) / 15).clamp(min=2**-20).half().float()
    zero = torch.full_like(scale, 8.0) if sym else (-low / scale).round().clamp(min_zero, 15)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Codes of ``w`` ``[..., n]`` with per-row ``scale``/``zero`` ``[...]``: ``clamp(round(w / scale) + zero, 0, 15)``."""
    return ((w / scale[..., None]).round() + zero[..., None]).clamp(0, 15)


def rtn_weight(w: torch.Tensor, group_size: int, sym: bool, min_zero: int = 0, bias: torch.Tensor | None = None) -> IntWeight:
    """Round-to-nearest of ``w`` ``[out, in]`` with contiguous groups (the baseline every method is measured against)."""
    out, width = w.shape
    groups = w.detach().float().reshape(out, width // group_size, group_size)
    scale, zero = fit_groups(groups, sym, min_zero)
    codes = quantize_codes(groups, scale, zero).reshape(out, width)
    return IntWeight(codes.to(torch.uint8), scale.t().half().contiguous(), zero.t().to(torch.uint8).contiguous(),
                     contiguous_groups(width, group_size).to(w.device), None if bias is None else bias.detach().clone())


def fake_quantize(w: torch.Tensor, group_size: int, sym: bool, min_zero: int = 0) -> torch.Tensor:
    """``w`` ``[out, in]`` after round-to-nearest and back, in float32 (what :func:`rtn_weight` would store)."""
    out, width = w.shape
    groups = w.float().reshape(out, width // group_size, group_size)
    scale, zero = fit_groups(groups, sym, min_zero)
    return ((quantize_codes(groups, scale, zero) - zero[..., None]) * scale[..., None]).reshape(out, width)


def check_group_size(widths: dict[str, int], group_size: int) -> None:
    """Every input width in ``widths`` (layer name -> in_features) must be a multiple of ``group_size`` and of 8.

    Raises:
        ConfigError: naming the first layer that does not fit and the group sizes that would.
    """
    for name, width in widths.items():
        if group_size < 8 or group_size % 8 or width % group_size:
            common = 0
            for value in widths.values():
                common = value if not common else _gcd(common, value)
            fits = [g for g in (256, 128, 64, 32) if common % g == 0]
            hint = f"use --group-size {' or '.join(map(str, fits))}" if fits else "no standard group size fits this model"
            raise ConfigError(f"--group-size {group_size} does not divide the {width} inputs of {name} (groups of a multiple of 8 "
                              f"input channels are needed); {hint}")


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


# ---- packing ------------------------------------------------------------------------------------------------
def pack_int4(values: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """``[..., n]`` codes 0..15 -> ``[..., n/8]`` int32, nibble ``k`` holding element ``order[k]`` of each 8."""
    v = values.to(torch.int64).reshape(*values.shape[:-1], -1, 8)[..., list(order)]
    packed = (v << _SHIFTS.to(v.device)).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_int4(packed: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``[..., m]`` int32 -> ``[..., 8m]`` uint8."""
    nibbles = ((packed.to(torch.int64) & 0xFFFFFFFF)[..., None] >> _SHIFTS.to(packed.device)) & 15
    inverse = sorted(range(8), key=lambda k: order[k])  # element e sits in nibble inverse[e]
    return nibbles[..., inverse].reshape(*packed.shape[:-1], -1).to(torch.uint8)


def pack_weight(weight: IntWeight, spec: "QuantSpec") -> dict[str, torch.Tensor]:
    """The tensors of ``weight`` in ``spec.method``'s layout (names relative to the linear's prefix)."""
    out = {"scales": weight.scale.half().contiguous()}
    if spec.method == "awq":
        if weight.act_order:
            raise ConfigError("act-order (desc_act) weights have no place in the AWQ format; save them with --format gptq")
        out |= {"qweight": pack_int4(weight.codes.t(), AWQ_ORDER), "qzeros": pack_int4(weight.zero, AWQ_ORDER)}
    else:
        zero = (weight.zero.to(torch.int64) - 1) & 15 if spec.checkpoint_format == "gptq" else weight.zero
        out |= {"qweight": pack_int4(weight.codes, NATURAL_ORDER).t().contiguous(), "qzeros": pack_int4(zero, NATURAL_ORDER),
                "g_idx": weight.g_idx.to(torch.int32)}
    if weight.bias is not None:
        out["bias"] = weight.bias.detach().half()
    return out


def unpack_weight(tensors: dict[str, torch.Tensor], spec: "QuantSpec", name: str) -> IntWeight:
    """An :class:`IntWeight` from the tensors of one linear in ``spec``'s layout (``name`` for errors)."""
    missing = [k for k in ("qweight", "qzeros", "scales") if k not in tensors]
    if missing:
        raise ModelLoadError(f"{name} has a qweight but no {', '.join(missing)}; the folder is incomplete or not {spec.method}")
    scale = tensors["scales"]
    groups, out = scale.shape
    if spec.method == "awq":
        codes = unpack_int4(tensors["qweight"], AWQ_ORDER).t().contiguous()
        zero = unpack_int4(tensors["qzeros"], AWQ_ORDER)
    else:
        codes = unpack_int4(tensors["qweight"].t(), NATURAL_ORDER).contiguous()
        zero = unpack_int4(tensors["qzeros"], NATURAL_ORDER) + (1 if spec.checkpoint_format == "gptq" else 0)
    width = codes.shape[1]
    if codes.shape[0] != out or zero.shape != (groups, out) or width % groups:
        raise ModelLoadError(f"{name}: qweight {tuple(tensors['qweight'].shape)}, qzeros {tuple(tensors['qzeros'].shape)} and "
                             f"scales {tuple(scale.shape)} do not fit one {spec.method} layer; the folder is damaged or another format")
    g_idx = tensors.get("g_idx")
    if g_idx is None:
        g_idx = contiguous_groups(width, width // groups)
    elif g_idx.shape != (width,) or int(g_idx.min()) < 0 or int(g_idx.max()) >= groups:
        raise ModelLoadError(f"{name}: g_idx {tuple(g_idx.shape)} does not index the {groups} groups of {width} inputs")
    return IntWeight(codes, scale.half(), zero, g_idx.to(torch.int32), tensors.get("bias"))


def split_state(state: dict[str, torch.Tensor], spec: "QuantSpec") -> tuple[dict[str, torch.Tensor], dict[str, IntWeight]]:
    """Separate a quantized folder's tensors into plain ones and :class:`IntWeight` per linear prefix."""
    prefixes = {k.removesuffix(".qweight") for k in state if k.endswith(".qweight")}
    plain = {k: v for k, v in state.items() if k.rsplit(".", 1)[0] not in prefixes}
    weights = {p: unpack_weight({k.rsplit(".", 1)[1]: v for k, v in state.items() if k.rsplit(".", 1)[0] == p}, spec, p)
               for p in sorted(prefixes)}
    return plain, weights


def join_state(plain: dict[str, torch.Tensor], weights: dict[str, IntWeight], spec: "QuantSpec") -> dict[str, torch.Tensor]:
    """Inverse of :func:`split_state`: plain tensors (fp16) plus each linear's packed tensors."""
    state = {k: v.detach().half().contiguous() if v.is_floating_point() else v for k, v in plain.items()}
    for prefix, weight in weights.items():
        state |= {f"{prefix}.{k}": v.cpu() for k, v in pack_weight(weight, spec).items()}
    return state


# ---- quantization_config ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantSpec:
    """A folder's quantization: ``method`` is the format (``awq`` or ``gptq``), the rest its parameters.

    Attributes:
        method: awq (AutoAWQ GEMM) or gptq.
        bits: 4 (the only width the formats pack here).
        group_size: input channels per group.
        sym: zero fixed at 8 (gptq only; AWQ's GEMM layout is always asymmetric).
        desc_act: act-order: groups in order of decreasing Hessian diagonal, ``g_idx`` permuted (gptq only).
        checkpoint_format: gptq (v1, zeros stored minus one) or gptq_v2.
        quantizer: the method that computed the weights (rtn, awq or gptq), recorded in the config.
    """

    method: str
    bits: int = 4
    group_size: int = 128
    sym: bool = False
    desc_act: bool = False
    checkpoint_format: str = "gptq"
    quantizer: str = "rtn"

    def __post_init__(self) -> None:
        if self.method not in FORMATS:
            raise ConfigError(f"quantized format {self.method!r} is unknown; use {' or '.join(FORMATS)}")
        if self.bits != 4:
            raise ConfigError(f"--bits {self.bits}: the awq and gptq formats are written with 4 bits here; for 8-bit weights "
                              "serve the float model with --quant w8a16")
        if self.method == "awq" and (self.sym or self.desc_act):
            raise ConfigError("the AWQ format is asymmetric with contiguous groups: drop --sym/--desc-act or use --format gptq")

    @property
    def min_zero(self) -> int:
        """Smallest zero point the format stores: v1 GPTQ keeps ``zero - 1`` in 4 bits, so an asymmetric zero of 0 cannot be."""
        return 1 if self.method == "gptq" and self.checkpoint_format == "gptq" and not self.sym else 0

    def to_config(self) -> dict[str, Any]:
        """The ``quantization_config`` entry of ``config.json`` (the keys AutoAWQ / GPTQModel write)."""
        if self.method == "awq":
            return {"quant_method": "awq", "bits": self.bits, "group_size": self.group_size, "zero_point": True,
                    "version": "gemm", "modules_to_not_convert": None}
        return {"quant_method": "gptq", "bits": self.bits, "group_size": self.group_size, "sym": self.sym,
                "desc_act": self.desc_act, "static_groups": False, "true_sequential": True, "lm_head": False,
                "damp_percent": 0.01, "checkpoint_format": self.checkpoint_format, "meta": {"quantizer": [f"puyu:{self.quantizer}"]}}

    @classmethod
    def from_config(cls, hf_config: dict[str, Any], where: str) -> "QuantSpec | None":
        """The spec of a ``config.json`` dict, None when it has no ``quantization_config``.

        Raises:
            ModelLoadError: a quantization puyu does not load (the message names what it loads).
        """
        qc = hf_config.get("quantization_config")
        if qc is None:
            return None
        supported = "puyu loads 4-bit AWQ (GEMM) and GPTQ folders; for others, load the float model and quantize it with puyu quantize"
        method = str(qc.get("quant_method", "")).lower()
        bits = qc.get("bits", qc.get("w_bit"))
        if method not in FORMATS or bits != 4:
            raise ModelLoadError(f"{where}: quantization_config quant_method={method or None!r} bits={bits!r} is not supported; "
                                 f"{supported}")
        group_size = int(qc.get("group_size", qc.get("q_group_size", -1)))
        if method == "awq":
            version = str(qc.get("version", "gemm")).lower()
            if version != "gemm" or not qc.get("zero_point", True):
                raise ModelLoadError(f"{where}: AWQ version={version!r} zero_point={qc.get('zero_point')!r} is not supported; {supported}")
            return cls("awq", 4, group_size, quantizer="awq")
        checkpoint_format = str(qc.get("checkpoint_format", "gptq")).lower()
        if checkpoint_format not in ("gptq", "gptq_v2"):
            raise ModelLoadError(f"{where}: GPTQ checkpoint_format={checkpoint_format!r} is not supported (gptq or gptq_v2); {supported}")
        return cls("gptq", 4, group_size, bool(qc.get("sym", True)), bool(qc.get("desc_act", False)), checkpoint_format, "gptq")

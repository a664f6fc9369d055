"""Weight-only quantized linear layers: int8 (w8a16) and group-wise int4 (w4a16), RTN at load.

Formats (what a calibration method such as AWQ produces too, so it can fill them):

* w8a16: ``qweight`` int8 ``[out, in]``, symmetric, one scale per output channel:
  ``w = q * scale[out]``.
* w4a16: asymmetric, one scale and zero per group of ``group_size`` input channels:
  ``w = (q - 8) * scale[g, out] + zero[g, out]`` with ``q`` in 0..15.  Calibrated
  weights (AWQ, GPTQ, saved folders: :class:`~puyu.quant.formats.IntWeight`,
  ``w = (q - z) * s``) fill the same layout through :meth:`Int4Linear.from_int_weight`
  with ``scale = s`` and ``zero = (8 - z) * s``; AWQ's per-channel activation
  scales are already folded into the preceding RMSNorm weights, and GPTQ's
  act-order groups become contiguous by permuting the input channels once
  (``perm``: the layer reads ``x[..., perm]``).

Three kernel paths compute the same formula (``kernel`` below; ``auto`` picks):

* ``avx2`` (x86 CPUs with AVX2, the default there when a C compiler built it): puyu's own int4/int8 products
  (:mod:`puyu.kernels.gemv`), which quantize the activations per block of 32 to int16 (int8 for w4a8, whose weights
  are w4a16's: llama.cpp's Q4_1 x Q8_1 products, twice the products per instruction) and multiply integers;
  the weights are stored in that module's tiles of 8 output rows.  Every row is computed the same way whatever
  the batch holds, so batched and speculative decoding stay exact.  Measured on 2 AVX2 cores (Zen 3) before the
  tiled layout (which made decode products about 2x faster again): 1.5-2x faster per decode layer than
  ``packed``, the int8 LM head 3x, and a 512-token prefill chunk as fast as (or faster than) the float32 matmul
  there; with tiles on 2 AVX-512 Xeon cores, such a chunk takes 1.25x the float32 matmul.
* ``packed`` (other CPUs): PyTorch's packed kernels
  (``_weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``), which read 1 or
  0.5 bytes per weight instead of 2-4 — decode is bound by memory bandwidth, so
  that is the speed-up.  They are vectorized (AVX2 and AVX-512) only for bf16
  activations; with float32 or float16 activations they run a scalar loop,
  measured 15-60x slower on 2 cores (an int4 1536x576 layer, one row: 1.2-1.8 ms
  in float32 against 0.04-0.13 ms in bf16).  So this path always feeds them bf16,
  whatever the model's dtype, and returns the model's dtype: a float32 model on
  an AVX2 laptop gets the fast kernel too.
* ``dequantize`` (any device; the default off the CPU): rebuild the weight in the
  activation dtype each call and use the dense matmul.  Correct everywhere and
  the reference the packed path is tested against; not fast for decode.

The other paths leave w4a8's activations unquantized: it computes as w4a16 there.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from puyu.errors import ConfigError, ModelLoadError
from puyu.kernels import build as kernels
from puyu.kernels import gemv
from puyu.quant.formats import IntWeight, contiguous_groups

log = logging.getLogger(__name__)
KERNELS = ("auto", "avx2", "packed", "dequantize")
PACKED_GROUP_SIZES = (256, 128, 64, 32)  # what _weight_int4pack_mm_for_cpu accepts; it also needs out_features % 16 == 0
PACKED_ACTIVATIONS = torch.bfloat16  # the only dtype the packed CPU kernels vectorize (see the module docstring)
INT8_ROWS_PER_CALL = 12288
TARGETS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj", "lm_head")


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """``auto`` → ``avx2`` on a CPU where it builds, else ``packed`` on the CPU, ``dequantize`` elsewhere; a CPU kernel
    off the CPU, or ``avx2`` where it cannot run, is refused."""
    if kernel not in KERNELS:
        raise ConfigError(f"quant kernel {kernel!r} is unknown; use {', '.join(KERNELS)}")
    if kernel == "auto":
        return ("avx2" if kernels.available() else "packed") if device.type == "cpu" else "dequantize"
    if kernel in ("packed", "avx2") and device.type != "cpu":
        raise ConfigError(f"the {kernel} int4/int8 kernels run on the CPU only, the model is on {device.type}; use quant_kernel=dequantize")
    if kernel == "avx2" and not kernels.available():
        raise ConfigError("quant_kernel=avx2 needs an x86 CPU with AVX2 and a C compiler (cc or gcc) to build it once; the log "
                          "says which is missing; use quant_kernel=auto")
    return kernel


def _fits_avx2(kernel: str, asked: str, in_features: int, group_size: int | None = None) -> str:
    """``kernel``, or ``packed`` when the avx2 kernel was picked by ``auto`` but the shapes are not multiples of 32."""
    if kernel != "avx2" or (in_features % 32 == 0 and (group_size is None or group_size % 32 == 0)):
        return kernel
    if asked == "avx2":
        raise ConfigError(f"the avx2 kernel needs inputs and groups in multiples of 32, this layer has {in_features} inputs"
                          f"{f' in groups of {group_size}' if group_size else ''}; use quant_kernel=auto")
    return "packed"


def _packed_call(kernel, x: torch.Tensor, *args) -> torch.Tensor:
    """Run a packed CPU kernel on ``x`` (any leading shape) in bf16 and return ``x``'s dtype."""
    flat = x.reshape(-1, x.shape[-1]).to(PACKED_ACTIVATIONS)
    return kernel(flat, *args).reshape(*x.shape[:-1], -1).to(x.dtype)


class Int8Linear(nn.Module):
    """``y = x @ (q * scale).T + b`` with int8 ``q`` ``[out, in]`` and per-row ``scale``."""

    def __init__(self, linear: nn.Linear, kernel: str = "auto"):
        super().__init__()
        self.kernel = _fits_avx2(resolve_kernel(kernel, linear.weight.device), kernel, linear.in_features)
        self.out_features = linear.out_features
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-8)
        q = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        if self.kernel == "avx2":
            q, scale = gemv.pack_int8(q, scale)
        self.register_buffer("qweight", q)
        scale_dtype = {"packed": PACKED_ACTIVATIONS, "avx2": torch.float32}.get(self.kernel, linear.weight.dtype)
        self.register_buffer("scale", scale.to(scale_dtype))
        self.bias = linear.bias

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight ``[out, in]`` in ``dtype`` (default: the scales' dtype)."""
        dtype = dtype or self.scale.dtype
        q, scale = self.qweight, self.scale
        if self.kernel == "avx2":
            q, scale = gemv.unpack_int8(q, scale, self.out_features)
        return q.to(dtype) * scale.to(dtype)[:, None]

    def _packed(self, flat: torch.Tensor) -> torch.Tensor:
        # A vocabulary-sized layer runs as slices of output rows: same values, and at 32 rows about 1.5x
        # faster than one call (the LM head: 23.6 -> 15.7 ms on 2 cores for 49152 x 576).
        parts = [torch.ops.aten._weight_int8pack_mm(flat, self.qweight[i : i + INT8_ROWS_PER_CALL], self.scale[i : i + INT8_ROWS_PER_CALL])
                 for i in range(0, self.qweight.shape[0], INT8_ROWS_PER_CALL)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "avx2":
            y = gemv.int8_matmul(x, self.qweight, self.scale, self.out_features)
        elif self.kernel == "packed":
            y = _packed_call(self._packed, x)
        else:
            y = F.linear(x, self.dequantize(x.dtype))
        return y + self.bias if self.bias is not None else y


class Int4Linear(nn.Module):
    """Group-wise asymmetric int4; see the module docstring for the formula.

    ``Int4Linear(linear, group_size)`` rounds a float layer to nearest (min/max per group, float zero);
    :meth:`from_int_weight` takes calibrated integer weights instead.
    """

    def __init__(self, linear: nn.Linear, group_size: int, kernel: str = "auto"):
        super().__init__()
        out_features, in_features = linear.weight.shape
        w = linear.weight.detach().float().reshape(out_features, in_features // group_size, group_size)
        low, high = w.amin(-1), w.amax(-1)
        scale = ((high - low) / 15).clamp(min=1e-8)
        q = ((w - low[..., None]) / scale[..., None]).round().clamp(0, 15).reshape(out_features, in_features)
        self._fill(q, scale.t(), (low + 8 * scale).t(), group_size, linear.bias, kernel, linear.weight.dtype, linear.weight.device)

    @classmethod
    def from_int_weight(cls, weight: IntWeight, kernel: str = "auto", dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> "Int4Linear":
        """The layer of calibrated weights ``w = (q - z) * s`` (``dtype``: the model's activations)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        codes, scale, zero, group_size = weight.codes, weight.scale.float(), weight.zero.float(), weight.group_size
        perm = None
        if weight.act_order:  # make each group a run of input channels; the layer permutes its input the same way
            perm = torch.argsort(weight.g_idx.long(), stable=True)
            if not torch.equal(weight.g_idx[perm].cpu(), contiguous_groups(codes.shape[1], group_size)):
                raise ModelLoadError(f"g_idx has groups of unequal size (expected {group_size} inputs each); the folder is damaged")
            codes = codes[:, perm]
        bias = None if weight.bias is None else nn.Parameter(weight.bias.detach().to(device, dtype), requires_grad=False)
        module._fill(codes, scale, (8 - zero) * scale, group_size, bias, kernel, dtype, torch.device(device), perm)
        return module

    def _fill(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int, bias, kernel: str,
              dtype: torch.dtype, device: torch.device, perm: torch.Tensor | None = None) -> None:
        """Store codes ``q`` ``[out, in]`` (0..15) with ``scale``/``zero`` ``[in / group, out]`` in the kernel's layout."""
        out_features, self.in_features = q.shape
        self.out_features = out_features
        self.kernel = _fits_avx2(resolve_kernel(kernel, device), kernel, self.in_features, group_size)
        if self.kernel == "packed":
            sub = next((g for g in PACKED_GROUP_SIZES if group_size % g == 0), None)
            if sub is None or out_features % 16:
                if kernel == "packed":
                    raise ConfigError(f"the packed int4 kernel needs groups of 32-256 inputs and out_features % 16 == 0, "
                                      f"this layer has groups of {group_size} and {out_features} outputs; use quant_kernel=dequantize")
                self.kernel = "dequantize"
            else:  # a group of, e.g., 576 inputs is 9 kernel groups of 64 with the same scale and zero
                scale, zero = scale.repeat_interleave(group_size // sub, 0), zero.repeat_interleave(group_size // sub, 0)
                group_size = sub
        self.group_size = group_size
        self.activation_bits = 16  # 8 for w4a8 (quantize_model); only the avx2 kernels quantize activations
        self.register_buffer("perm", None if perm is None else perm.to(device))
        q = q.to(device)
        if self.kernel == "avx2":  # tiles of 8 rows; w = q * scale + low with low = zero - 8 * scale
            codes, table = gemv.pack_int4(q, scale.t(), (zero - 8 * scale).t())
            self.register_buffer("scales_and_zeros", table)
            self.register_buffer("qweight", codes)
            self.bias = bias
            return
        # [in / group, out, 2] (scale, zero): the layout of PyTorch's int4 kernels
        table = torch.stack([scale, zero], -1)
        self.register_buffer("scales_and_zeros", table.contiguous().to(device, PACKED_ACTIVATIONS if self.kernel == "packed" else dtype))
        if self.kernel == "packed":
            self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1))
        else:  # two values a byte: even input channels in the low nibble
            q = q.to(torch.uint8)
            self.register_buffer("qweight", q[:, 0::2] | (q[:, 1::2] << 4))
        self.bias = bias

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight ``[out, in]``, inputs in ``perm`` order (not for ``packed``: that layout is PyTorch's own)."""
        dtype = dtype or self.scales_and_zeros.dtype
        out = self.out_features
        if self.kernel == "avx2":
            q, scale, low = gemv.unpack_int4(self.qweight, self.scales_and_zeros, out)
            q = q.to(dtype).reshape(out, -1, self.group_size)
            return (q * scale.to(dtype)[..., None] + low.to(dtype)[..., None]).reshape(out, self.in_features)
        q = torch.stack([self.qweight & 15, self.qweight >> 4], -1).to(dtype).reshape(out, -1, self.group_size)
        scale, zero = self.scales_and_zeros.to(dtype).unbind(-1)  # [in / group, out]
        return ((q - 8) * scale.t()[..., None] + zero.t()[..., None]).reshape(out, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        if self.kernel == "avx2":
            y = gemv.int4_matmul(x, self.qweight, self.scales_and_zeros, self.group_size, self.out_features, self.activation_bits)
        elif self.kernel == "packed":
            y = _packed_call(torch.ops.aten._weight_int4pack_mm_for_cpu, x, self.qweight, self.group_size, self.scales_and_zeros)
        else:
            y = F.linear(x, self.dequantize(x.dtype))
        return y + self.bias if self.bias is not None else y


def on_int4_grid(weight: torch.Tensor, group_size: int = 32) -> bool:
    """Whether w4a16 keeps ``weight`` ``[out, in]`` exactly as the CPU kernels store it (puyu's: float16 scales and
    minima; else float32): true for weights dequantized from a 4-bit format with a float16 scale and minimum per
    group of 32 (GGUF's Q4_1, like the built-in model)."""
    if weight.dim() != 2 or weight.shape[1] % group_size:
        return False
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight.detach().float().cpu(), requires_grad=False)
    kept = Int4Linear(linear, group_size, "avx2" if kernels.available() else "dequantize").dequantize(torch.float32)
    return torch.allclose(kept, linear.weight, rtol=0, atol=1e-6 * linear.weight.abs().max().item())


def describe_kernel(kernel: str, mode: str) -> str:
    """The kernel path in words, for the one log line at start."""
    if kernel == "avx2":
        bits = "int4" if mode in ("w4a16", "w4a8") else "int8"
        activations = "int8" if mode == "w4a8" else "int16"
        return f"puyu's {bits} x {activations}-activation products (puyu/kernels/gemv.c, {kernels.build_name()} build)"
    if kernel == "packed":
        name = "_weight_int4pack_mm_for_cpu" if mode in ("w4a16", "w4a8") else "_weight_int8pack_mm"
        return (f"PyTorch's packed {name} with bf16 activations "
                f"({torch.backends.cpu.get_cpu_capability()} dispatch; its float32 path is scalar)")
    return "dequantize per call + dense matmul (correct, not fast)"


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` already holds quantized linears (an earlier :func:`quantize_model`, or a quantized folder)."""
    return any(isinstance(m, (Int4Linear, Int8Linear)) for m in model.modules())


def quantize_model(model: nn.Module, mode: str, group_size: int = 64, kernel: str = "auto") -> int:
    """Replace the decoder's projections and the LM head in place (``mode``: w8a16, w4a16 or w4a8); an unmerged LoRA
    adapter's base layer is replaced inside its wrapper, and the adapter keeps computing in float beside it.

    The embedding stays in full precision (a tied LM head gets its own quantized copy, int8 in both modes).
    Layers whose input width is not a multiple of ``group_size`` stay as they are.
    Returns the number of layers replaced.

    Raises:
        ConfigError: the model is already quantized.
    """
    if is_quantized(model):
        raise ConfigError(f"the model is already quantized (a quantized folder, or quantized before); drop --quant {mode}, "
                          "or give the float model")
    replaced, used = 0, None
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            # A wrapper's ``base`` (an unmerged LoRA adapter's frozen layer) plays the wrapper's role.
            role = name.rpartition(".")[2] if child_name == "base" else child_name
            if role not in TARGETS or not isinstance(child, nn.Linear):
                continue
            if mode != "w8a16" and child.in_features % group_size:
                log.warning("%s.%s: %d inputs is not a multiple of %d; left unquantized", name, child_name, child.in_features, group_size)
                continue
            # The LM head stays int8 with int16 activations in w4a16 and w4a8 (llama.cpp keeps its output layer at 6-8
            # bits too): int4 there costs far more accuracy than the bandwidth it saves.
            if mode == "w8a16" or role == "lm_head":
                quantized = Int8Linear(child, kernel)
            else:
                quantized = Int4Linear(child, group_size, kernel)
                quantized.activation_bits = 8 if mode == "w4a8" else 16
            setattr(module, child_name, quantized)
            replaced, used = replaced + 1, quantized.kernel
    if used:
        log.info("quantized %d linear layers to %s; kernel: %s", replaced, mode, describe_kernel(used, mode))
    return replaced


def apply_int_weights(model: nn.Module, weights: dict[str, IntWeight], kernel: str = "auto") -> int:
    """Replace the linears named by ``weights`` (module paths such as ``model.layers.0.mlp.up_proj``) with
    :class:`Int4Linear` layers in the model's dtype and device; returns how many."""
    dtype, device = next(model.parameters()).dtype, next(model.parameters()).device
    used = None
    for prefix, weight in weights.items():
        parent_name, _, child = prefix.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
            getattr(parent, child)
        except AttributeError:
            raise ModelLoadError(f"quantized layer {prefix} has no place in this model; "
                                 "config and weights come from different models?") from None
        layer = Int4Linear.from_int_weight(weight, kernel, dtype, device)
        setattr(parent, child, layer)
        used = layer.kernel
    if used:
        log.info("%d int4 linear layers from calibrated weights; kernel: %s", len(weights), describe_kernel(used, "w4a16"))
    return len(weights)

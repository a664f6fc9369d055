"""Load a model by name or path onto a device, converting GGUF files once.

``load_model("smollm2-135m-instruct")`` -> ``(Transformer, Tokenizer)``.  A
GGUF is dequantized on first use and stored as a Hugging Face folder under
``$PUYU_HOME/models/<name>-<key>/`` (key: path, size and mtime of the file), so
later loads are a safetensors memory map.  A vision-language folder (LLaVA, InternVL, SmolVLM/Idefics3) loads as its
language model with ``model.image_input`` set (:class:`~puyu.model.vlm.prompt.ImageInput`: the processor and the
vision encoder), so every command that runs a text model runs it, and image parts reach it.  ``dtype``/``device`` ``"auto"``
are decided by :mod:`puyu.hardware` (CUDA when present; bf16 only where the
device computes it natively, fp32 otherwise).  A quantized folder (AWQ or GPTQ,
from ``puyu quantize`` or another tool) loads through the same path with int4
linears, and counts as quantized for ``auto``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import torch

from puyu.errors import ModelLoadError
from puyu.hardware import resolve_device, resolve_dtype
from puyu.home import home_subdir
from puyu.kernels import build as kernels
from puyu.model.adapters import load_adapter
from puyu.model.gguf_io import read_gguf
from puyu.model.hf_io import build_model, load_folder, read_config, read_hf_config, read_quant_spec, read_weights, save_pretrained
from puyu.model.registry import registered_sampling, resolve
from puyu.model.transformer import Transformer
from puyu.model.vlm.config import is_vision_language
from puyu.quant.calibration import LAYER_LINEARS
from puyu.quant.weight_only import on_int4_grid
from puyu.tokenizer import Tokenizer

log = logging.getLogger(__name__)


# Bumped when a conversion writes something new, so folders converted before are redone (2: recommended sampling)
CONVERSION_VERSION = 2


def converted_folder(gguf_path: Path) -> Path:
    """Cache folder of a GGUF file's conversion (it may not exist yet)."""
    stat = gguf_path.stat()
    source = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CONVERSION_VERSION}"
    key = hashlib.sha256(source.encode()).hexdigest()[:12]
    return home_subdir("models") / f"{gguf_path.stem}-{key}"


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF into a Hugging Face folder in the cache, once; return the folder."""
    target = converted_folder(gguf_path)
    if (target / "config.json").exists():
        return target
    log.info("converting %s once to %s", gguf_path, target)
    config, state, meta = read_gguf(gguf_path)
    tokenizer = Tokenizer.from_gguf_metadata(meta)
    tokenizer.sampling_defaults = tokenizer.sampling_defaults or registered_sampling(gguf_path)
    model = build_model(config, state, torch.float32, "cpu")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_pretrained(model, tokenizer, partial)
    partial.rename(target)  # config.json appears only when the folder is complete
    return target


def load_model(name_or_path: str | Path, dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = "auto",
               chat_template: str | None = None, adapter: str | Path | None = None,
               quantized: bool = False, quant_kernel: str = "auto") -> tuple[Transformer, Tokenizer]:
    """Load a registered name, a Hugging Face folder or a GGUF file: the one loading path of every command.

    Args:
        dtype: ``auto`` (see :mod:`puyu.hardware`), ``float32``, ``bfloat16`` or ``float16``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        chat_template: override the model's template: ``chatml``, ``internlm2``, ``llama3``, Jinja source or a Jinja file.
        adapter: a LoRA adapter folder (PEFT format, e.g. from ``puyu train``) merged into the weights (kept
            unmerged when ``quantized``: :func:`~puyu.quant.quantize.quantize_for_inference` quantizes the base).
        quantized: the weights will be quantized for inference (``auto`` then picks float32 on a CPU).
        quant_kernel: how the int4 layers of a quantized folder compute (``auto``, ``packed`` or ``dequantize``,
            see :mod:`puyu.quant.weight_only`).

    Raises:
        ModelLoadError: missing/corrupt files, unsupported architecture or quantization, unknown name, a bad adapter.
        ConfigError: a bad dtype or device.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev, quantized=quantized)  # a bad dtype is reported before any file is read
    path = model_folder(name_or_path)
    if read_quant_spec(path) is not None:
        if adapter:
            raise ModelLoadError(f"{path} is quantized: a LoRA adapter cannot be merged into int4 weights; "
                                 "merge it into the float model, then quantize that")
        dt = resolve_dtype(dtype, dev, quantized=True)
    if path.is_dir() and (path / "config.json").is_file() and is_vision_language(read_hf_config(path)):
        model, tokenizer = _load_vision_language(path, dt, dev)
    else:
        model, tokenizer = load_folder(path, dt, dev, quant_kernel)
    if adapter:  # kept beside weights that will be quantized: merged, it would move them off their grid
        load_adapter(model, adapter, merge=not quantized)
    if chat_template:
        tokenizer.set_chat_template(chat_template)
    return model, tokenizer


def model_folder(name_or_path: str | Path) -> Path:
    """The folder a registered name, a folder or a .gguf file (converted once) loads from."""
    path = resolve(name_or_path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf; give a .gguf file or a Hugging Face model folder")
        path = convert_gguf(path)
    return path


def pick_quant(name_or_path: str | Path, quant: str, device: str | torch.device | None = "auto",
               dtype: str | torch.dtype | None = "auto") -> str:
    """``quant``, with ``auto`` decided: ``w4a16`` where it is both faster and lossless, ``none`` elsewhere.

    Faster: on a CPU with puyu's int4 kernels (:mod:`puyu.kernels.gemv`) decode reads a quarter of float32's bytes
    (the built-in model: 2.2x float32's tokens/s on AVX2, 3x bf16's on AVX-512 with AMX; a long prompt's first token
    comes later with AMX, whose bf16 prefill is faster).  Lossless: the model's decoder projections already sit on
    w4a16's grid (checked on the first and last layer), as a model from a 4-bit GGUF's Q4_1 does, so only the LM head
    rounds (int8 per channel).  Other models, and a ``dtype`` asked for other than float32, keep their weights.
    """
    dev = resolve_device(device)
    asked = resolve_dtype(dtype, dev)  # a bad dtype is reported before any file is read
    if quant != "auto":
        return quant
    path = model_folder(name_or_path)
    if (dev.type != "cpu" or not kernels.available() or read_quant_spec(path) is not None
            or dtype not in ("auto", None) and asked != torch.float32):
        return "none"
    hf = read_hf_config(path)
    if is_vision_language(hf):
        return "none"
    last = read_config(path).num_layers - 1
    names = {f"model.layers.{i}.{part}.weight" for i in (0, last) for part in LAYER_LINEARS}
    weights = read_weights(path, names.__contains__)
    chosen = "w4a16" if len(weights) == len(names) and all(on_int4_grid(w) for w in weights.values()) else "none"
    log.info("--quant auto: %s (%s)", chosen, "the decoder projections sit on the int4 grid; the LM head rounds to int8"
             if chosen == "w4a16" else "the weights are not on an int4 grid; quantizing would round them")
    return chosen


def _load_vision_language(path: Path, dtype: torch.dtype, device: torch.device) -> tuple[Transformer, Tokenizer]:
    from puyu.model.vlm.loading import load_vlm
    from puyu.model.vlm.prompt import ImageInput

    vlm, tokenizer, processor = load_vlm(path, dtype, device)
    model = vlm.language_model
    model.image_input = ImageInput(vlm, processor)
    return model, tokenizer

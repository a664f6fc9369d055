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
from puyu.model.adapters import load_adapter
from puyu.model.gguf_io import read_gguf
from puyu.model.hf_io import build_model, load_folder, read_hf_config, read_quant_spec, save_pretrained
from puyu.model.registry import resolve
from puyu.model.transformer import Transformer
from puyu.model.vlm.config import is_vision_language
from puyu.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def converted_folder(gguf_path: Path) -> Path:
    """Cache folder of a GGUF file's conversion (it may not exist yet)."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return home_subdir("models") / f"{gguf_path.stem}-{key}"


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF into a Hugging Face folder in the cache, once; return the folder."""
    target = converted_folder(gguf_path)
    if (target / "config.json").exists():
        return target
    log.info("converting %s once to %s", gguf_path, target)
    config, state, meta = read_gguf(gguf_path)
    tokenizer = Tokenizer.from_gguf_metadata(meta)
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
    path = resolve(name_or_path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf; give a .gguf file or a Hugging Face model folder")
        path = convert_gguf(path)
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


def _load_vision_language(path: Path, dtype: torch.dtype, device: torch.device) -> tuple[Transformer, Tokenizer]:
    from puyu.model.vlm.loading import load_vlm
    from puyu.model.vlm.prompt import ImageInput

    vlm, tokenizer, processor = load_vlm(path, dtype, device)
    model = vlm.language_model
    model.image_input = ImageInput(vlm, processor)
    return model, tokenizer

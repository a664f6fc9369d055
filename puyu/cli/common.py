"""Flags and helpers shared by the subcommands: the model flags, loading with a spinner."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time

log = logging.getLogger("puyu")
QUANT_HELP = ("quantize at load: w8a16/w4a16 round-to-nearest, w4a8 (w4a16's weights with int8 activations, llama.cpp's "
              "Q4_1 x Q8_1 scheme: faster batched and prompt products on x86), w8a8 SmoothQuant, auto: w4a16 on a CPU where "
              "the model's weights already sit on its int4 grid (the built-in model: lossless but for the int8 LM head, ~3x "
              "the decode speed), none elsewhere; a folder from puyu quantize needs none (default: auto)")


def add_model_args(parser: argparse.ArgumentParser, optional: bool = True, quant: bool = False) -> None:
    """The model positional plus --dtype/--device/--chat-template/--adapter, shared by every command that loads one
    (``quant``: also ``--quant`` for commands that chat through :func:`load_llm`)."""
    from puyu.model.registry import DEFAULT_MODEL

    if optional:
        parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                            help=f"registered name, HF folder or .gguf file (default: {DEFAULT_MODEL})")
    else:
        parser.add_argument("model", help="registered name, HF folder or .gguf file")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: auto)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--chat-template", default=None, help="override the model's template: chatml, internlm2, llama3 or a Jinja file")
    parser.add_argument("--adapter", default=None, help="a LoRA adapter folder (PEFT format, e.g. from puyu train) merged into the model")
    if quant:
        parser.add_argument("--quant", default="auto", choices=["auto", "none", "w8a16", "w4a16", "w4a8", "w8a8"],
                            help=QUANT_HELP)


def load_llm(args: argparse.Namespace):
    """An :class:`~puyu.api.LLM` from the flags of :func:`add_model_args`, with a spinner on a terminal."""
    from puyu.api import LLM

    start = time.perf_counter()
    with status(f"loading {args.model} (the first load of a GGUF converts it once)"):
        llm = LLM(args.model, dtype=args.dtype, device=args.device, chat_template=args.chat_template, adapter=args.adapter,
                  quant=getattr(args, "quant", "none"))
    log.info("loaded %s in %.1f s (%s, %s%s)", args.model, time.perf_counter() - start, llm.model.dtype, llm.model.device,
             "" if llm.quant == "none" else f", {llm.quant}")
    return llm


def status(text: str):
    """A spinner on an interactive stderr, nothing otherwise."""
    if sys.stderr.isatty():
        from rich.console import Console

        return Console(stderr=True).status(text)
    return contextlib.nullcontext()

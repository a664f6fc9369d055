"""``puyu quantize``: registered with the CLI (see :mod:`puyu.cli`).

``puyu quantize MODEL OUT --method awq|gptq|rtn [--group-size 128] [--calib FILE] [--calib-samples 128 --calib-seqlen 512]``
writes OUT as a Hugging Face folder with a standard ``quantization_config`` (AutoAWQ GEMM or GPTQ layout) that
``puyu chat/serve/eval OUT`` load directly.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from puyu.cli.common import add_model_args, status


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantize a model's weights to int4 (AWQ, GPTQ or round-to-nearest) on calibration text and save it."""
    from puyu.errors import ConfigError
    from puyu.model import load_model
    from puyu.model.hf_io import save_quantized
    from puyu.quant.calibration import calibration_batches
    from puyu.quant.formats import QuantSpec
    from puyu.quant.quantize import DEFAULT_FORMAT, quantize_weights

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; give a new folder or delete it")
    fmt = args.format or DEFAULT_FORMAT[args.method]
    desc_act = args.desc_act if args.desc_act is not None else args.method == "gptq" and fmt == "gptq"
    spec = QuantSpec(fmt, args.bits, args.group_size, args.sym, desc_act, quantizer=args.method)
    start = time.perf_counter()
    with status(f"loading {args.model}"):
        # Calibration runs in float32 unless --dtype says otherwise (bf16 activations would blur the searched errors).
        model, tokenizer = load_model(args.model, "float32" if args.dtype == "auto" else args.dtype, args.device,
                                      chat_template=args.chat_template, adapter=args.adapter)
    tokens = None
    if args.method != "rtn":
        tokens = calibration_batches(tokenizer, args.calib, args.calib_samples, args.calib_seqlen, args.seed, args.data_dir)
    weights = quantize_weights(model, args.method, spec, tokens)
    save_quantized(model, tokenizer, out, spec, weights)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
    calibration = f" on {tokens.shape[0]} x {tokens.shape[1]} calibration tokens" if tokens is not None else ""
    print(f"quantized {len(weights)} linear layers of {args.model} with {args.method}{calibration} in {time.perf_counter() - start:.0f} s; "
          f"wrote {out} ({spec.method} format, {spec.bits}-bit, groups of {spec.group_size}, {size:.1f} MiB)")
    print(f"use it: puyu chat {out} | puyu serve {out} | puyu eval --model {out} --tasks ...")
    return 0


def register(sub, common) -> None:
    p = sub.add_parser("quantize", parents=[common], help=cmd_quantize.__doc__, description=cmd_quantize.__doc__ +
                       " Calibration runs in float32 (--dtype to change); the LM head and embeddings stay in float.")
    add_model_args(p, optional=False)
    p.add_argument("out", help="output folder (a Hugging Face folder with quantization_config)")
    p.add_argument("--method", choices=["awq", "gptq", "rtn"], default="awq", help="awq (default), gptq, or rtn (no calibration)")
    p.add_argument("--bits", type=int, default=4, help="weight bits (4)")
    p.add_argument("--group-size", type=int, default=128, help="input channels per scale/zero group; must divide every layer's inputs "
                   "(default: 128; SmolLM2-135M's 576 inputs take 64 or 32)")
    p.add_argument("--format", choices=["awq", "gptq"], default=None, help="folder layout (default: awq for awq, gptq for gptq and rtn)")
    p.add_argument("--sym", action="store_true", help="symmetric: zero fixed at 8 (gptq format only)")
    p.add_argument("--desc-act", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ act-order: quantize columns by decreasing activation energy (default: on for --method gptq, "
                   "which measured lower held-out perplexity on the built-in model; --no-desc-act keeps groups contiguous)")
    p.add_argument("--calib", default=None, help="calibration text: .jsonl with a 'text' field per row, or .txt "
                   "(default: the pre-training samples' calibration split under $PUYU_DATA_DIR/pretrain)")
    p.add_argument("--calib-samples", type=int, default=128, help="calibration windows (default: 128)")
    p.add_argument("--calib-seqlen", type=int, default=512, help="tokens per calibration window (default: 512)")
    p.add_argument("--seed", type=int, default=0, help="which calibration windows are drawn (default: 0)")
    p.add_argument("--data-dir", default=None, help="folder holding pretrain/ for the default calibration text (default: $PUYU_DATA_DIR)")
    p.set_defaults(func=cmd_quantize)

"""``puyu models`` and ``puyu convert``: registered with the CLI (see :mod:`puyu.cli`)."""

from __future__ import annotations

import argparse

from puyu.cli.common import add_model_args, load_llm


def cmd_models(args: argparse.Namespace) -> int:
    """List the registered model names and whether they are installed."""
    from puyu.errors import ModelLoadError
    from puyu.model.registry import REGISTRY, resolve

    for entry in REGISTRY.values():
        try:
            where = str(resolve(entry.name))
        except ModelLoadError:
            where = f"not installed: {entry.install}"
        print(f"{entry.name}\t{entry.description}\t{where}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Save a model (name, folder or GGUF) as a Hugging Face folder that transformers loads."""
    llm = load_llm(args)
    out = llm.save(args.out)
    print(f"saved {args.model} to {out}")
    return 0


def register(sub, common) -> None:
    sub.add_parser("models", parents=[common], help=cmd_models.__doc__).set_defaults(func=cmd_models)
    convert = sub.add_parser("convert", parents=[common], help=cmd_convert.__doc__)
    add_model_args(convert, optional=False)
    convert.add_argument("out", help="output folder")
    convert.set_defaults(func=cmd_convert)

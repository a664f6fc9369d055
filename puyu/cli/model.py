"""``puyu models`` and ``puyu convert``: registered with the CLI (see :mod:`puyu.cli`)."""

from __future__ import annotations

import argparse

from puyu.cli.common import add_model_args, load_llm


def cmd_models(args: argparse.Namespace) -> int:
    """List the registered models and the architectures puyu loads; with a MODEL, estimate its memory and speed here."""
    from puyu.errors import ModelLoadError
    from puyu.model.architectures import ARCHITECTURES
    from puyu.model.registry import REGISTRY, resolve

    if args.model:
        return _estimate(args)
    print("registered models:")
    for entry in REGISTRY.values():
        try:
            where = str(resolve(entry.name))
        except ModelLoadError:
            where = f"not installed: {entry.install}"
        print(f"  {entry.name}\t{entry.description}\t{where}")
    print("\narchitectures (a Hugging Face folder with config.json, *.safetensors and tokenizer.json or a SentencePiece "
          "tokenizer.model; or a GGUF file of a llama, qwen2 or internlm2 model):")
    for a in ARCHITECTURES:
        template = f"built-in template '{a.template}' if the folder has none" if a.template else "the folder's own template"
        notes = f"; {a.notes}" if a.notes else ""
        print(f"  {a.hf_class} ({a.models}): {a.differs}; {template}{notes}")
    print("\n`puyu models MODEL` estimates a model's memory and decode speed on this machine before loading it.")
    return 0


def _estimate(args: argparse.Namespace) -> int:
    """Print the estimate of ``args.model`` (a name, folder or GGUF) from its config alone."""
    from puyu.hardware import resolve_device, resolve_dtype
    from puyu.model.estimate import estimate
    from puyu.model.gguf_io import config_from_metadata, read_metadata
    from puyu.model.hf_io import read_config
    from puyu.model.registry import resolve

    path = resolve(args.model)
    if path.is_file():
        import gguf

        reader = gguf.GGUFReader(path)
        config = config_from_metadata(read_metadata(reader), {t.name for t in reader.tensors})
    else:
        config = read_config(path)
    dtype = resolve_dtype(args.dtype, resolve_device(args.device))
    print(f"{path}:")
    for line in estimate(config, dtype, context=args.context).lines() + ([] if path.is_file() else _folder_needs(path, config.arch)):
        print(f"  {line}")
    return 0


def _folder_needs(folder, arch: str) -> list[str]:
    """What a Hugging Face folder has and lacks for loading: weights, tokenizer, chat template."""
    import importlib.util
    import json

    from puyu.model.architectures import BY_ARCH, bin_conversion_command

    if list(folder.glob("*.safetensors")):
        weights = "weights: safetensors"
    elif list(folder.glob("*.bin")):
        weights = f"weights: PyTorch .bin only; convert them once with: {bin_conversion_command(str(folder))}"
    else:
        weights = "weights: MISSING (no .safetensors)"
    if (folder / "tokenizer.json").exists():
        tokenizer = "tokenizer: tokenizer.json"
    elif (folder / "tokenizer.model").exists():
        ready = importlib.util.find_spec("sentencepiece") is not None
        tokenizer = "tokenizer: SentencePiece tokenizer.model" + ("" if ready else " (needs: pip install 'puyu[zoo]')")
    else:
        tokenizer = "tokenizer: MISSING (no tokenizer.json or tokenizer.model)"
    config = folder / "tokenizer_config.json"
    own = (folder / "chat_template.jinja").exists() or (config.exists() and "chat_template" in json.loads(config.read_text()))
    builtin = BY_ARCH[arch].template
    template = ("chat template: the folder's own" if own else f"chat template: built-in '{builtin}'" if builtin
                else "chat template: none (pass --chat-template chatml|internlm2|llama3)")
    return [weights, tokenizer, template]


def cmd_convert(args: argparse.Namespace) -> int:
    """Save a model (name, folder or GGUF) as a Hugging Face folder that transformers loads."""
    llm = load_llm(args)
    out = llm.save(args.out)
    print(f"saved {args.model} to {out}")
    return 0


def register(sub, common) -> None:
    models = sub.add_parser("models", parents=[common], help=cmd_models.__doc__)
    models.add_argument("model", nargs="?", default=None, help="a registered name, HF folder or .gguf file to estimate")
    models.add_argument("--dtype", default="auto", help="dtype of the estimate: auto, float32, bfloat16 or float16 (default: auto)")
    models.add_argument("--device", default="auto", help="device whose auto dtype is used (default: auto)")
    models.add_argument("--context", type=int, default=None, help="context length for the KV-cache figure (default: the model's)")
    models.set_defaults(func=cmd_models)
    convert = sub.add_parser("convert", parents=[common], help=cmd_convert.__doc__)
    add_model_args(convert, optional=False)
    convert.add_argument("out", help="output folder")
    convert.set_defaults(func=cmd_convert)

"""``puyu train``, ``puyu pretrain``, ``puyu merge`` and ``puyu export``: registered with the CLI (see :mod:`puyu.cli`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from puyu.model.registry import DEFAULT_MODEL


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune a model from a shipped recipe (lora_sft, qlora_sft, ...) or a recipe YAML file, with key=value overrides."""
    from puyu.train.config import load_recipe
    from puyu.train.trainer import Trainer

    recipe = load_recipe(args.recipe, args.overrides)
    result = Trainer(recipe, resume=args.resume).fit()
    if result.output is not None:
        val = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
        print(f"trained {result.steps} steps, loss {result.train_loss:.4f}{val}; result in {result.output}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pre-train a new model from scratch on token shards (from puyu tokenizer shards), from a shipped recipe
    (pretrain_tiny, ...) or a recipe YAML with a pretrain section, with key=value overrides."""
    from puyu.errors import ConfigError
    from puyu.train.config import load_recipe
    from puyu.train.trainer import Trainer

    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.pretrain is None:
        raise ConfigError(f"recipe {recipe.name!r} has no pretrain section, so it fine-tunes a model: run it with puyu train")
    result = Trainer(recipe, resume=args.resume).fit()
    if result.output is not None:
        val = f", validation loss {result.val_loss:.4f} (perplexity {math.exp(min(result.val_loss, 700)):.1f})" if result.val_loss else ""
        print(f"pre-trained {result.steps} steps, loss {result.train_loss:.4f}{val}; model in {result.output}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge a LoRA adapter into its base model and save a Hugging Face folder."""
    from puyu.api import LLM

    llm = LLM(args.base, dtype=args.dtype, device="cpu", adapter=args.adapter)
    print(f"merged {args.adapter} into {args.base}: {llm.save(args.out)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a model (optionally with a LoRA adapter merged in) as GGUF for llama.cpp, or as a Hugging Face folder."""
    from puyu.api import LLM
    from puyu.model.gguf_export import export_gguf

    llm = LLM(args.model, dtype="float32", device="cpu", adapter=args.adapter)
    if args.format == "hf":
        out = llm.save(args.out)
    else:
        out = Path(args.out)
        out = out / "model.gguf" if out.is_dir() or not out.suffix else out
        export_gguf(llm.model, llm.tokenizer, out, args.outtype, name=Path(args.model).name)
    print(f"exported {args.model} to {out}")
    return 0


def register(sub, common) -> None:
    train = sub.add_parser("train", parents=[common], help=cmd_train.__doc__, description=cmd_train.__doc__)
    train.add_argument("recipe", help="a recipe YAML file, or a shipped recipe name (lora_sft, qlora_sft, full_sft, ...)")
    train.add_argument("overrides", nargs="*", help="key=value settings over the recipe, e.g. train.max_steps=20 lora.r=16")
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest checkpoint of the latest run of this recipe (or of output_dir=RUN_DIR)")
    train.set_defaults(func=cmd_train)

    pretrain = sub.add_parser("pretrain", parents=[common], help=cmd_pretrain.__doc__, description=cmd_pretrain.__doc__)
    pretrain.add_argument("recipe", help="a recipe YAML file with a pretrain section, or a shipped one (pretrain_tiny)")
    pretrain.add_argument("overrides", nargs="*", help="key=value settings over the recipe, e.g. pretrain.size=micro train.max_steps=100")
    pretrain.add_argument("--resume", action="store_true",
                          help="continue from the newest checkpoint of the latest run of this recipe (or of output_dir=RUN_DIR)")
    pretrain.set_defaults(func=cmd_pretrain)

    merge = sub.add_parser("merge", parents=[common], help=cmd_merge.__doc__, description=cmd_merge.__doc__)
    merge.add_argument("base", help="the base model the adapter was trained on (name, folder or .gguf)")
    merge.add_argument("adapter", help="the adapter folder (adapter_config.json + adapter_model.safetensors)")
    merge.add_argument("out", help="output folder")
    merge.add_argument("--dtype", default="float32", help="dtype of the saved weights: float32, bfloat16 or float16")
    merge.set_defaults(func=cmd_merge)

    export = sub.add_parser("export", parents=[common], help=cmd_export.__doc__, description=cmd_export.__doc__)
    export.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"registered name, HF folder or .gguf file (default: {DEFAULT_MODEL})")
    export.add_argument("out", help="output .gguf file (or folder for --format hf)")
    export.add_argument("--format", choices=["gguf", "hf"], default="gguf", help="gguf (llama.cpp) or hf (default: gguf)")
    export.add_argument("--outtype", choices=["f32", "f16", "q8_0"], default="f16", help="GGUF tensor type (default: f16)")
    export.add_argument("--adapter", default=None, help="merge this LoRA adapter folder in first")
    export.set_defaults(func=cmd_export)

"""``puyu eval``: registered with the CLI (see :mod:`puyu.cli`).

``puyu eval --model M --tasks a,b [--mode gen|ppl] [--shots K] [--limit N]``,
``puyu eval CONFIG.yaml`` (models × tasks), ``puyu eval --list`` and
``puyu eval compare RUN_A RUN_B``.  Judged tasks (``mt_bench``) take
``--judge-model NAME --judge-api-base URL [--judge-api-key KEY]``, which
override the config file's ``judge:``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _judge_from_args(args: argparse.Namespace, configured: dict | None) -> dict | None:
    flags = {"model": args.judge_model, "api_base": args.judge_api_base, "api_key": args.judge_api_key}
    given = {k: v for k, v in flags.items() if v is not None}
    return {**(configured or {}), **given} if given or configured else None


def _config_from_args(args: argparse.Namespace):
    from puyu.errors import ConfigError
    from puyu.eval.pipeline import EvalConfig

    if args.target:
        config = EvalConfig.from_yaml(args.target[0])
        overrides = {"mode": args.mode, "shots": args.shots, "limit": args.limit, "data_dir": args.data_dir, "out": args.out,
                     "chat": args.apply_chat_template, "max_new_tokens": args.max_new_tokens}
        for key, value in overrides.items():
            if value is not None:
                setattr(config, key, value)
        config.judge = _judge_from_args(args, config.judge)
        EvalConfig.__post_init__(config)
        return config
    if not args.tasks:
        raise ConfigError("give --tasks a,b (see puyu eval --list) or a config file: puyu eval configs/eval/NAME.yaml")
    entry = {"backend": args.backend, "model": args.model, "dtype": args.dtype, "device": args.device, "batch_size": args.batch_size,
             "max_length": args.max_length, "base_url": args.base_url, "api_key": args.api_key, "tokenizer": args.tokenizer,
             "chat_template": args.chat_template, "quant": args.quant, "kv_quant": args.kv_quant}
    return EvalConfig(models=[{k: v for k, v in entry.items() if v is not None}],
                      tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
                      mode=args.mode, shots=args.shots, limit=args.limit, chat=args.apply_chat_template, data_dir=args.data_dir,
                      max_new_tokens=args.max_new_tokens, out=args.out, judge=_judge_from_args(args, None))


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate models on benchmarks (OpenCompass-style outputs under $PUYU_HOME/runs/eval)."""
    from puyu.errors import ConfigError

    if args.list:
        from puyu.eval.tasks import list_tasks, load_task

        for name, summary in list_tasks().items():
            print(f"{name:16} [{'/'.join(load_task(name).modes)}] {summary}")
        return 0
    if args.target and args.target[0] == "compare":
        from puyu.eval.summary import compare_runs

        if len(args.target) != 3:
            raise ConfigError("usage: puyu eval compare RUN_A RUN_B (two run folders)")
        print(compare_runs(Path(args.target[1]), Path(args.target[2])), end="")
        return 0
    if len(args.target) > 1:
        raise ConfigError(f"puyu eval takes one config file, got {len(args.target)} arguments: {' '.join(args.target)}")
    from puyu.eval.pipeline import run_eval

    run_dir = run_eval(_config_from_args(args), reuse=args.reuse)
    print((run_dir / "summary.md").read_text(), end="")
    print(f"\nrun folder: {run_dir}")
    return 0


def register(sub, common) -> None:
    from puyu.model.registry import DEFAULT_MODEL

    p = sub.add_parser("eval", parents=[common], help=cmd_eval.__doc__, description=cmd_eval.__doc__ +
                       " Forms: puyu eval --model M --tasks a,b | puyu eval CONFIG.yaml | puyu eval --list | puyu eval compare RUN_A RUN_B")
    p.add_argument("target", nargs="*", help="a YAML config (models x tasks), or: compare RUN_A RUN_B")
    p.add_argument("--list", action="store_true", help="list the tasks and exit")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registered name, HF folder or .gguf; the served name for --backend openai (default: {DEFAULT_MODEL})")
    p.add_argument("--tasks", default=None, help="comma-separated task names, e.g. gsm8k,mmlu,ceval")
    p.add_argument("--mode", choices=["gen", "ppl"], default=None, help="for tasks that have both: generate and extract, or loglikelihood")
    p.add_argument("--shots", type=int, default=None, help="few-shot examples (default: each task's own)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens per answer (default: each task's own)")
    p.add_argument("--limit", type=int, default=None, help="examples per task, a seeded sample (default: all)")
    p.add_argument("--data-dir", default=None, help="benchmark folder holding eval/ (default: $PUYU_DATA_DIR)")
    p.add_argument("--out", default=None, help="output folder (default: $PUYU_HOME/runs/eval)")
    p.add_argument("--reuse", nargs="?", const="latest", default=None, help="resume a run: latest (default), a run name or a folder")
    p.add_argument("--apply-chat-template", action=argparse.BooleanOptionalAction, default=None,
                   help="render prompts through the model's chat template (default: each task's own setting)")
    p.add_argument("--backend", choices=["local", "openai", "hf"], default="local",
                   help="local model core, an OpenAI-compatible server, or transformers")
    p.add_argument("--dtype", default=None, help="local/hf: auto, float32, bfloat16 (default: auto for local, float32 for hf)")
    p.add_argument("--device", default=None, help="local: auto, cpu, cuda (default: auto)")
    p.add_argument("--chat-template", default=None, help="local: override the model's chat template")
    p.add_argument("--quant", choices=["w8a16", "w4a16", "w4a8", "w8a8"], default=None,
                   help="local: quantize at load as puyu serve --quant does (a folder from puyu quantize needs none)")
    p.add_argument("--kv-quant", choices=["int8", "int4"], default=None,
                   help="local: score and generate through an int8/int4 KV cache, as puyu serve --kv-quant does")
    p.add_argument("--batch-size", type=int, default=None, help="local/hf: sequences per forward pass (default: 16)")
    p.add_argument("--max-length", type=int, default=None, help="context window to use, e.g. 2048 as lm-eval (default: the model's)")
    p.add_argument("--base-url", default=None, help="openai: the server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default=None, help="openai: the key (default: EMPTY)")
    p.add_argument("--tokenizer", default=None, help="openai: model name/folder whose tokenizer the server uses (default: --model)")
    p.add_argument("--judge-model", default=None, help="judged tasks (mt_bench): the judge's model name on its server, e.g. gpt-4")
    p.add_argument("--judge-api-base", default=None,
                   help="judged tasks: the judge's OpenAI-compatible server URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-api-key", default=None, help="judged tasks: the judge server's key (default: $OPENAI_API_KEY, else EMPTY)")
    p.set_defaults(func=cmd_eval)

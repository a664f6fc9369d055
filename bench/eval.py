"""Evaluation throughput of the built-in model: puyu's local backend vs transformers run as lm-eval's HF backend does.

Same process, same weights (puyu's converted folder of the built-in GGUF), same
dtype and threads, same requests (prompts rendered by the same tasks, tokenized
the same way): HellaSwag items scored by loglikelihood of each ending, and
GSM8K items answered by greedy generation (5-shot).  The transformers side is
:class:`~puyu.eval.backends.local.HFBackend`: length-sorted batches, right
padding, full ``[B, T, vocab]`` logits and log-softmax, as lm-eval's HF model
does; generation through ``model.generate`` with stop strings.  Prints
examples/s for both and the ratio ours / transformers (higher is better), and
checks that both pick the same HellaSwag endings.

    python bench/eval.py [--hellaswag 500] [--gsm8k 50] [--dtype auto] [--batch-size 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def prepared_requests(task: str, limit: int, data_dir):
    from puyu.eval.prompts import prepare, uses_own_rows
    from puyu.eval.tasks import fewshot_pool, load_examples, load_task

    spec = load_task(task)
    examples = load_examples(spec, data_dir, limit)
    pool = [e.doc for e in load_examples(spec, data_dir)] if spec.shots and uses_own_rows(spec) else fewshot_pool(spec, data_dir, "")
    return [prepare(spec, e, pool) for e in examples]


def rate(fn, n: int) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return n / (time.perf_counter() - start), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hellaswag", type=int, default=500, help="HellaSwag items (loglikelihood)")
    parser.add_argument("--gsm8k", type=int, default=50, help="GSM8K items (generation, 5-shot)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 only where the CPU computes it natively), float32, bfloat16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None, help="default: $PUYU_DATA_DIR or ../shared/datasets")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pathlib import Path

    from puyu.api import LLM
    from puyu.eval.backends import model_folder
    from puyu.eval.backends.local import HFBackend, LocalBackend
    from puyu.home import data_dir

    root = data_dir(args.data_dir or os.environ.get("PUYU_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
    folder = model_folder("smollm2-135m-instruct")
    ours = LocalBackend(LLM(str(folder), dtype=args.dtype, device="cpu"), batch_size=args.batch_size)
    theirs = HFBackend(str(folder), dtype=args.dtype, batch_size=args.batch_size)

    rows = []
    hellaswag = prepared_requests("hellaswag", args.hellaswag, root)
    requests = [r for p in hellaswag for r in p.requests]
    ours_rate, ours_ll = rate(lambda: ours.loglikelihood(requests), len(hellaswag))
    theirs_rate, theirs_ll = rate(lambda: theirs.loglikelihood(requests), len(hellaswag))
    same = sum(abs(a[0] - b[0]) < 1e-3 for a, b in zip(ours_ll, theirs_ll)) / len(requests)
    rows.append((f"HellaSwag loglikelihood ({len(hellaswag)} items)", ours_rate, theirs_rate))

    gsm8k = prepared_requests("gsm8k", args.gsm8k, root)
    gen = [r for p in gsm8k for r in p.requests]
    ours_gen_rate, ours_text = rate(lambda: ours.generate_until(gen), len(gsm8k))
    theirs_gen_rate, theirs_text = rate(lambda: theirs.generate_until(gen), len(gsm8k))
    rows.append((f"GSM8K generation, 5-shot ({len(gsm8k)} items)", ours_gen_rate, theirs_gen_rate))

    from puyu.hardware import describe_machine

    print(describe_machine())
    print(f"built-in model, {args.dtype}, batch {args.batch_size}, {args.threads} threads")
    print("| measure (examples/s) | puyu | transformers (lm-eval HF style) | ratio |\n|---|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f} |")
    print(f"loglikelihoods within 1e-3: {same:.1%}; identical GSM8K answers: "
          f"{sum(a == b for a, b in zip(ours_text, theirs_text))}/{len(gen)}")


if __name__ == "__main__":
    main()

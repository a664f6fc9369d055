"""LoRA fine-tuning speed and peak memory on the built-in model: puyu vs transformers + peft; the shipped recipe end to end.

Both sides train LoRA r=8 (alpha 16, dropout 0.05, on q_proj and v_proj - peft's
default for Llama) with AdamW on the same batches: Alpaca demo chats rendered
through puyu's template, one sample per row, cut/padded to ``--seq`` tokens,
loss on the assistant tokens only; the same dtype (fp32, or bf16 weights with
bf16 autocast) and the same thread count.  Each side runs in its own process so
its peak resident memory (``ru_maxrss``, loading included) is its own.  Prints
tokens/s (batch x seq per second of optimizer steps after warm-up), peak
memory, and the ratios ours / theirs (target: >= 1.5x tokens/s at <= their memory).
The default dtype is the one ``precision: auto`` picks on this machine (bf16
only where the CPU computes it natively), and the CPU's features are printed.

Then the shipped ``lora_sft`` recipe runs as a user runs it (``puyu train
lora_sft train.max_steps=N``, its default precision): the time from the command
to the first logged step, and its tokens/s (real tokens, packed rows).

``--compile`` adds puyu with ``train.compile`` (compiled decoder layers; the warm-up steps compile).
``--repeats N`` alternates the sides N times and reports median tok/s (a shared 2-core machine varies by 10-40%).
``--profile`` adds, per side, where the step's time goes (as ``bench/pretrain.py --profile``: the matrix products,
attention, the rest) and the ceiling: peft's step over puyu's own products + attention, the ratio puyu would reach if
everything else cost nothing (puyu's products are fewer than peft's: its LM head skips the positions without a target).

    python bench/train.py [--dtypes auto|float32,bfloat16] [--steps 10] [--batch 4] [--seq 128] [--threads 2] [--recipe-steps 3]
                          [--compile] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DATA = "sft/llamafactory_demo/alpaca_en_demo.json"
DATA_DIR = Path(os.environ.get("PUYU_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def batches(tokenizer, count: int, batch: int, seq: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of (ids [batch, seq], labels [batch, seq] with -100 off the assistant tokens), unshifted."""
    from puyu.data import read_samples

    samples = read_samples(DATA_DIR / DATA)[: count * batch]
    pad = tokenizer.eos_id
    out = []
    for start in range(0, count * batch, batch):
        ids = torch.full((batch, seq), pad)
        labels = torch.full((batch, seq), -100)
        for row, sample in enumerate(samples[start : start + batch]):
            chat = tokenizer.render(sample.messages)
            n = min(seq, len(chat.ids))
            ids[row, :n] = torch.tensor(chat.ids[:n])
            labels[row, :n] = torch.tensor([i if m else -100 for i, m in zip(chat.ids[:n], chat.loss_mask[:n])])
        out.append((ids, labels))
    return out


def run_ours(folder: str, dtype: str, compiled: bool = False):
    from puyu.model import load_model
    from puyu.model.lora import LoraConfig
    from puyu.train.objective import LMObjective, compile_training, prepare_model

    model, _ = load_model(folder, dtype="float32", device="cpu")
    prepare_model(model, "lora", LoraConfig(r=8, alpha=16, dropout=0.05, targets=["q_proj", "v_proj"]),
                  "bf16" if dtype == "bfloat16" else "fp32")
    objective = LMObjective(model.train())
    if compiled:
        compile_training(objective, torch.device("cpu"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(ids, labels):
        targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = objective(ids, targets, positions, None) / (targets != -100).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run_peft(folder: str, dtype: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(ids, labels):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from puyu.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_folder(args.folder)
    data = batches(tokenizer, args.steps + 2, args.batch, args.seq)
    make = {"ours": run_ours, "ours-compiled": lambda f, d: run_ours(f, d, compiled=True), "peft": run_peft}[args.worker]
    step = make(args.folder, args.dtype)
    for ids, labels in data[:2]:  # warm-up
        step(ids, labels)
    start = time.perf_counter()
    for ids, labels in data[2:]:
        step(ids, labels)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"tok_s": args.steps * args.batch * args.seq / seconds, "peak_mb": peak_mb}
    if args.profile:
        from pretrain import profile_shares  # bench/ is this script's folder, first on sys.path

        result["profile"] = profile_shares(lambda batch: step(*batch), data[2:4])
    print(json.dumps(result))


def run_recipe(steps: int) -> tuple[float, float, str]:
    """``puyu train lora_sft`` for ``steps`` steps: (seconds to the first logged step, mean tokens/s, precision)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "puyu", "train", "lora_sft", f"train.max_steps={steps}", f"output_dir={run}",
                   f"data.data_dir={DATA_DIR}", "train.save_every=0", "monitor.sample_prompts=[]", "monitor.tensorboard=false"]
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first = None
        while process.poll() is None:
            if first is None and (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().strip():
                first = time.perf_counter() - start
            time.sleep(0.2)
        if process.returncode:
            raise SystemExit(f"puyu train failed:\n{process.stderr.read()}")
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "loss" in x]
        precision = json.loads((run / "summary.json").read_text())["precision"]
        return first or time.perf_counter() - start, sum(m["tokens_per_s"] for m in metrics) / len(metrics), precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", default="auto", help="comma-separated: auto (what precision: auto picks here), float32, bfloat16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipe-steps", type=int, default=3, help="steps of the shipped lora_sft recipe (0 = skip)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side (alternating); the median is reported")
    parser.add_argument("--compile", action="store_true", help="also puyu with train.compile (compiled decoder layers)")
    parser.add_argument("--profile", action="store_true", help="also where each side's step time goes, and the ceiling")
    parser.add_argument("--worker", choices=["ours", "ours-compiled", "peft"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from puyu.hardware import describe_machine, resolve_precision
    from puyu.model.loader import convert_gguf
    from puyu.model.registry import resolve

    torch.set_num_threads(args.threads)
    auto = resolve_precision("auto", torch.device("cpu"))
    print(describe_machine())
    print(f"precision auto -> {auto.name} ({auto.reason})")
    folder = str(convert_gguf(resolve("smollm2-135m-instruct")))
    print(f"LoRA r=8, batch {args.batch}x{args.seq}, {args.steps} steps, {args.threads} threads, median of {args.repeats} run(s)")
    sides = ["ours"] + (["ours-compiled"] if args.compile else []) + ["peft"]
    print(f"{'dtype':<10} {'side':<14} {'tok/s':>8} {'peak MB':>8} {'x peft':>7} {'x memory':>9}")
    for dtype in args.dtypes.split(","):
        dtype = {"auto": "bfloat16" if auto.name == "bf16" else "float32"}.get(dtype, dtype)
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for _ in range(args.repeats):  # sides alternate, so a slow minute of a shared machine hits all of them
            for side in sides:
                command = [sys.executable, __file__, "--worker", side, "--dtype", dtype, "--folder", folder, "--steps",
                           str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads)]
                command += ["--profile"] if args.profile else []
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
        results = {side: {"tok_s": statistics.median(r["tok_s"] for r in got), "peak_mb": max(r["peak_mb"] for r in got)}
                   for side, got in runs.items()}
        theirs = results["peft"]
        for side in sides:
            r = results[side]
            print(f"{dtype:<10} {side:<14} {r['tok_s']:>8.1f} {r['peak_mb']:>8.0f} {r['tok_s'] / theirs['tok_s']:>7.2f} "
                  f"{r['peak_mb'] / theirs['peak_mb']:>9.2f}")
        if args.profile:
            shares = {side: got[-1]["profile"] for side, got in runs.items()}
            for side, share in shares.items():
                print(f"  {side:<14} step time: products {share['gemm']:.0%}, attention {share['sdpa']:.0%}, rest {share['rest']:.0%}")
            ours = shares["ours"]
            print(f"  ceiling (peft's step over puyu's products + attention): "
                  f"{shares['peft']['step_ms'] / (ours['step_ms'] * (ours['gemm'] + ours['sdpa'])):.2f}x peft")

    if args.recipe_steps:
        first, rate, precision = run_recipe(args.recipe_steps)
        print(f"\npuyu train lora_sft train.max_steps={args.recipe_steps} (precision {precision}): "
              f"first logged step after {first:.1f} s, {rate:.1f} tok/s")


if __name__ == "__main__":
    main()

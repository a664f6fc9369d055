"""Pre-training throughput and peak memory: puyu's train step vs a plain transformers LlamaForCausalLM loop (and litgpt).

Both sides train the same freshly initialised Llama-layout model (a puyu named
size, tied embeddings, vocabulary of the tokenizer) with AdamW (lr 1e-3,
weight decay 0.1, clipping at 1.0) on the same rows: ``--batch`` x ``--seq``
tokens per step from puyu's shard stream (C4 demo documents, a BPE trained
here).  puyu runs its own step - the stream's packed rows with
document-boundary masks and positions, ``LMObjective`` (fused LM head +
cross-entropy) - while transformers gets the same tokens as ``input_ids`` and
``labels`` (its standard causal-LM loop, attention across the packed documents:
less masking work than puyu does).  puyu's side steps AdamW fused, as its
trainer does; the peers' plain loops get torch's default AdamW.  fp32, and bf16 autocast over fp32 master
weights.  Each side runs in its own process so its peak resident memory
(``ru_maxrss``, imports included) is its own.  Prints the CPU's flags, tokens/s
(after warm-up steps), peak memory and the ratios puyu / theirs.

litgpt is measured when it is importable.  ``pip install --dry-run litgpt``
resolves with torch 2.13.0 but pins ``huggingface_hub<1.4`` and would
downgrade the 2.x that transformers 5 uses, so install it beside the venv:
``pip install --no-deps --target DIR litgpt lightning lightning-utilities
torchmetrics jsonargparse docstring_parser typeshed_client`` and run with
``PYTHONPATH=DIR``.

``--profile`` adds, per side, where the step's time goes (PyTorch profiler, self CPU time of 2 steps): the matrix
products, attention (SDPA, or puyu's own kernel) and the rest, and the ceiling any side can reach against transformers
while it runs the same product kernels and attention as fast: transformers' step over its own products + attention.
``--compile`` adds puyu with ``train.compile`` (its warm-up compiles both graphs: rows with and without packed
documents); ``--repeats N`` alternates the sides N times and reports medians (a shared 2-core machine varies by 10-20%
from minute to minute).

    python bench/pretrain.py [--size micro] [--seq 256] [--batch 8] [--steps 8] [--dtypes float32,bfloat16] [--threads 2]
                             [--compile] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
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

DATA = Path(os.environ.get("PUYU_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
C4 = DATA / "pretrain" / "llamafactory_text" / "c4_demo.jsonl"


def prepare(folder: Path, vocab: int) -> None:
    """A BPE of ``vocab`` tokens trained on the C4 demo, and the C4 demo tokenized into shards under ``folder``."""
    from puyu.data.documents import iter_documents
    from puyu.data.shards import write_source
    from puyu.tokenizer.training import train_tokenizer

    tokenizer = train_tokenizer(iter_documents(C4), vocab, show_progress=False)
    write_source(iter_documents(C4), tokenizer, folder, "c4")


def model_setup(args):
    """The puyu model (fp32, fresh init, seed 0), its config, and ``count`` batches of the stream."""
    from puyu.data.stream import PretrainData
    from puyu.tokenizer import Tokenizer
    from puyu.train.scratch import model_config, new_model

    tokenizer = Tokenizer.from_folder(Path(args.folder) / "tokenizer")
    config = model_config(args.size, "llama", tokenizer.vocab_size, args.seq)
    torch.manual_seed(0)
    model = new_model(config, 0.02, True)
    stream = PretrainData(args.folder, args.seq, seed=0)
    batches = [stream.micro_batches(s, args.batch, 1)[0][0] for s in range(args.steps + 2)]
    return model, config, batches


def optimizer_step(module, dtype: str, loss_of, fused: bool = False):
    """The same training step for every side: ``loss_of(batch)`` under bf16 autocast when asked, backward, clip,
    AdamW (lr 1e-3, weight decay 0.1; ``fused``: one vectorized kernel, as puyu's trainer runs it, where a plain
    loop gets torch's default per-tensor loop)."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.1, fused=fused)

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = loss_of(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def step_ours(model, config, dtype, compiled: bool = False):
    from puyu.train.objective import LMObjective, compile_training

    objective = LMObjective(model.train())
    if compiled:
        compile_training(objective, torch.device("cpu"))
    return optimizer_step(model, dtype, lambda b: objective(b.tokens, b.targets, b.positions, b.mask) / b.trained_tokens, fused=True)


def step_hf(model, config, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    from puyu.model.keymaps import native_to_hf

    hf = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.to_hf().items() if k not in ("architectures", "model_type")}))
    hf.load_state_dict(native_to_hf(model.state_dict(), config), strict=False)  # the same initial weights
    hf.train()
    return optimizer_step(hf, dtype, lambda b: hf(input_ids=b.tokens, labels=b.tokens).loss)


def step_litgpt(model, config, dtype):
    from litgpt.config import Config
    from litgpt.model import GPT

    lit = GPT(Config(name="puyu", block_size=config.max_position_embeddings, vocab_size=config.vocab_size,
                     padded_vocab_size=config.vocab_size,
                     n_layer=config.num_layers, n_head=config.num_heads, n_query_groups=config.num_kv_heads, n_embd=config.hidden_size,
                     rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm", norm_eps=config.rms_norm_eps,
                     mlp_class_name="LLaMAMLP", intermediate_size=config.intermediate_size, rope_base=int(config.rope_theta))).train()
    lit.lm_head.weight = lit.transformer.wte.weight  # tied, as the puyu and transformers models

    def loss_of(batch):
        logits = lit(batch.tokens)
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch.tokens[:, 1:].reshape(-1))

    return optimizer_step(lit, dtype, loss_of)


SIDES = {"puyu": step_ours, "puyu-compiled": lambda m, c, d: step_ours(m, c, d, compiled=True), "transformers": step_hf,
         "litgpt": step_litgpt}


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    model, config, batches = model_setup(args)
    step = SIDES[args.worker](model, config, args.dtype)
    for batch in batches[:2]:  # warm-up (compiled: also the graph of rows without packed documents, mask None)
        step(batch)
    if args.worker == "puyu-compiled":
        step(dataclasses.replace(batches[0], mask=None))
    start = time.perf_counter()
    for batch in batches[2:]:
        step(batch)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"tok_s": args.steps * args.batch * args.seq / seconds, "peak_mb": peak_mb}
    if args.profile:
        result["profile"] = profile_shares(step, batches[2:4])
    print(json.dumps(result))


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def profile_shares(step, batches) -> dict:
    """Shares of the self CPU time of ``batches``' steps: matrix products, attention (SDPA or puyu's span attention,
    forward and backward), the rest; and
    ``step_ms``, that time per step (under the profiler: longer than a plain step)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for batch in batches:
            step(batch)
    times = {event.key: event.self_cpu_time_total for event in prof.key_averages()}
    total = sum(times.values())
    gemm = sum(t for key, t in times.items() if key in GEMM_OPS) / total
    attention = sum(t for key, t in times.items() if "scaled_dot_product" in key or "span_attention" in key) / total
    return {"gemm": gemm, "sdpa": attention, "rest": 1 - gemm - attention, "step_ms": total / len(batches) / 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="micro", help="puyu named size (default: micro)")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also puyu with train.compile (compiled decoder layers)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side (alternating); the median is reported")
    parser.add_argument("--profile", action="store_true", help="also where each side's step time goes (see the docstring)")
    parser.add_argument("--worker", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from puyu.hardware import describe_machine
    from puyu.train.scratch import model_config, parameter_count

    print(describe_machine())
    sides = ["puyu"] + (["puyu-compiled"] if args.compile else []) + ["transformers"]
    sides += ["litgpt"] if importlib.util.find_spec("litgpt") else []
    if "litgpt" not in sides:
        print("litgpt: not importable (see this file's docstring for installing it beside the venv): skipped")
    total, body = parameter_count(model_config(args.size, "llama", args.vocab, args.seq))
    print(f"model {args.size} (llama layout, vocab {args.vocab}): {total / 1e6:.1f}M parameters ({body / 1e6:.1f}M without the "
          f"embedding); batch {args.batch}x{args.seq}, {args.steps} steps after 2 warm-up, {args.threads} threads")
    ours = [s for s in sides if s.startswith("puyu")]
    peers = [s for s in sides if s not in ours]
    with tempfile.TemporaryDirectory() as tmp:
        prepare(Path(tmp), args.vocab)
        for dtype in args.dtypes.split(","):
            runs: dict[str, list[dict]] = {side: [] for side in sides}
            for _ in range(args.repeats):  # sides alternate, so a slow minute of a shared machine hits all of them
                for side in sides:
                    command = [sys.executable, __file__, "--worker", side, "--dtype", dtype, "--folder", tmp, "--steps",
                               str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads),
                               "--size", args.size] + (["--profile"] if args.profile else [])
                    done = subprocess.run(command, capture_output=True, text=True)
                    if done.returncode:
                        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
                    runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            results = {side: {"tok_s": statistics.median(r["tok_s"] for r in got), "peak_mb": max(r["peak_mb"] for r in got)}
                       for side, got in runs.items()}
            print(f"\n{dtype} (median tok/s of {args.repeats} runs each)")
            print(f"{'side':<16}{'tok/s':>9}{'peak MB':>9}" + "".join(f"{'x ' + p:>22}" for p in peers))
            for side in sides:
                row = f"{side:<16}{results[side]['tok_s']:>9.0f}{results[side]['peak_mb']:>9.0f}"
                ours_r = results[side]
                if side in ours:
                    row += "".join(f"{ours_r['tok_s'] / results[p]['tok_s']:>13.2f} / {ours_r['peak_mb'] / results[p]['peak_mb']:<6.2f}"
                                   for p in peers)
                print(row)
            if args.profile:
                for side in sides:
                    shares = runs[side][-1]["profile"]
                    print(f"  {side:<14} step time: products {shares['gemm']:.0%}, attention {shares['sdpa']:.0%}, "
                          f"rest {shares['rest']:.0%}")
                peer = runs["transformers"][-1]["profile"]
                print(f"  ceiling with the same product and attention kernels: {1 / (peer['gemm'] + peer['sdpa']):.2f}x transformers")
        print("(ratios: tok/s ours / theirs (target >= 1.3) / peak memory ours / theirs (target <= 1))")


if __name__ == "__main__":
    main()

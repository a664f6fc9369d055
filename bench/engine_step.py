"""Where the engine's time goes on this machine: one decode step profiled, compile start-up, prompt lookup.

Built-in model, 2 threads, the dtype ``puyu serve`` picks (``auto``) unless ``--dtype``.

1. Profile: 32 decode steps of each ``--quant`` setting (and the last one with
   the step compiled, unless ``--skip-compile``) at each ``--profile-batches``
   size under ``torch.profiler``; the table groups the self CPU time by what it
   is (the compiled graph's fused kernels and wrapper, Dynamo's guards,
   quantized matmuls, dense matmuls, attention, norms/activations, sampling, and
   the rest: dispatch and Python) as milliseconds per step.
2. Start-up of ``--compile`` in fresh processes with an empty ``PUYU_HOME``:
   the first start (cold) and the second (from the compile cache), and whether
   both give the eager engine's greedy tokens.
3. Speculative decoding, output tok/s with and without, the acceptance rate,
   and whether the tokens are identical: prompt lookup on prompts that invite
   copying (RAG-style questions over a passage, "repeat", "summarize" — Alpaca
   demo rows), and a draft model (the float32 model drafted by its own w4a8
   copy) on chat prompts.
4. Quantized settings (``--throughput``, ``QUANT/KV_QUANT`` pairs): greedy decode
   tok/s of one stream and aggregate over 32 concurrent streams, and how many
   sequences of ``--context`` tokens fit in the same KV memory (``--kv-mib``).
5. The linear layers alone (``--gemm``): microseconds per call of the model's
   layer shapes (the LM head last) at 1 row (decode) and 128 rows (prefill) for the float32 and
   bf16 dense matmuls, the int8 weight-only packed kernel (w8a16), the W8A8
   layer (activation quantization included) and its bare ``torch._int_mm``.

    python bench/engine_step.py [--quant none,w8a16,w4a16] [--dtype auto] [--skip-compile] [--skip-profile] [--skip-speculative]
                                [--profile-batches 1,8] [--throughput none/none,w8a8/none,none/int8,none/int4,w8a8/int8] [--kv-mib 64]
                                [--context 512] [--gemm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PUYU_DATA_DIR", ROOT.parent / "shared" / "datasets"))
GROUPS = [("compiled graph: fused ops", ("compiledfxgraph", "graph_")),
          ("dynamo guards, inputs", ("torchdynamo cache lookup", "pregraph bytecode", "aotdispatcher")),
          ("quantized matmul", ("int4pack", "int8pack", "puyu::int4_matmul", "puyu::int8_matmul")),
          ("dense matmul", ("aten::mm", "aten::addmm", "aten::linear", "aten::bmm")),
          ("attention", ("attention", "softmax", "index_select", "index_copy", "gather")),
          ("norm / activation / rope", ("rsqrt", "pow", "mean", "silu", "mul", "add", "cat", "neg", "cos", "sin")),
          ("sampling", ("argmax", "topk", "sort"))]


def engine(quant: str, dtype: str, **config):
    from puyu.engine import EngineConfig, LLMEngine
    from puyu.model import load_model

    model, tokenizer = load_model("smollm2-135m-instruct", dtype=dtype, device="cpu", quantized=quant != "none")
    calib = str(DATA / "pretrain/llamafactory_text/c4_demo.jsonl") if quant == "w8a8" else None
    return LLMEngine(model, tokenizer, EngineConfig(quant=quant, quant_calib=calib, **config)), tokenizer


def profile_part(quants: list[str], dtype: str, batches: list[int], compiled: bool) -> None:
    """ms per decode step of each setting (and the last one compiled) at each batch size, grouped by what it is."""
    from torch.profiler import ProfilerActivity, profile

    from puyu.generation import SamplingParams

    settings = [(q, False) for q in quants] + ([(quants[-1], True)] if compiled else [])
    columns = [f"{q}{'+c' if c else ''} b{b}" for q, c in settings for b in batches]
    print(f"\n{'ms per decode step':28}" + "".join(f"{c:>14}" for c in columns))
    table: dict[str, dict[str, float]] = {}
    for quant, compile in settings:
        eng, tok = engine(quant, dtype, compile=compile)
        prompt = tok.render([{"role": "user", "content": "Write a long story about a dragon."}], add_generation_prompt=True).ids
        params = SamplingParams(max_new_tokens=33, temperature=0, ignore_eos=True)
        for batch in batches:
            eng.generate([prompt] * batch, params)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                started = time.perf_counter()
                eng.generate([prompt] * batch, params)
                wall = (time.perf_counter() - started) * 1e3 / 33
            groups: dict[str, float] = defaultdict(float)
            for event in prof.key_averages():
                name = event.key.lower()
                group = next((g for g, keys in GROUPS if any(k in name for k in keys)), None)
                if group:
                    groups[group] += event.self_cpu_time_total / 1e3 / 33
            groups["dispatch, Python, other"] = wall - sum(groups.values())
            groups["whole step (wall)"] = wall
            table[f"{quant}{'+c' if compile else ''} b{batch}"] = groups
        eng.shutdown()
    for group in [g for g, _ in GROUPS] + ["dispatch, Python, other", "whole step (wall)"]:
        print(f"{group:28}" + "".join(f"{table[c].get(group, 0.0):14.2f}" for c in columns))


STARTUP = """
import json, sys, time
import torch
torch.set_num_threads(2)
from puyu.engine import EngineConfig, LLMEngine
from puyu.generation import SamplingParams
from puyu.model import load_model
model, tok = load_model("smollm2-135m-instruct", dtype=sys.argv[2], device="cpu", quantized=sys.argv[1] != "none")
start = time.perf_counter()
eng = LLMEngine(model, tok, EngineConfig(quant=sys.argv[1], compile=sys.argv[3] == "compile"))
seconds = time.perf_counter() - start
prompts = [tok.render([{"role": "user", "content": q}], add_generation_prompt=True).ids
           for q in ("Name three colours.", "What is 2+2?", "Write a haiku about rain.")]
out = eng.generate(prompts, SamplingParams(max_new_tokens=24, temperature=0))
print(json.dumps({"seconds": seconds, "tokens": [r.token_ids for r in out]}))
"""


def startup_part(quant: str, dtype: str) -> None:
    def run(mode: str, home: str) -> dict:
        env = {**os.environ, "PUYU_HOME": home}
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        out = subprocess.run([sys.executable, "-c", STARTUP, quant, dtype, mode], capture_output=True, text=True, env=env, timeout=1800)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as home:
        eager = run("eager", home)
        cold = run("compile", home)
        cached = run("compile", home)
    same = eager["tokens"] == cold["tokens"] == cached["tokens"]
    print(f"\nserve --compile start-up ({quant}, dtype {dtype}): first {cold['seconds']:.0f} s, second (compile cache) "
          f"{cached['seconds']:.0f} s; greedy tokens eager = compiled = cached: {same}")


def copying_prompts(tok, count: int) -> list[list[int]]:
    rows = json.loads((DATA / "sft/llamafactory_demo/alpaca_en_demo.json").read_text())[100 : 100 + count]
    asks = ["Answer from the passage, quoting it.\nPassage: {p}\nQuestion: {q}", "Repeat this text exactly:\n{p}", "Summarize:\n{p}"]
    return [tok.render([{"role": "user", "content": asks[i % 3].format(p=r["output"][:500], q=r["instruction"])}],
                       add_generation_prompt=True).ids for i, r in enumerate(rows)]


def chat_prompts(tok, count: int) -> list[list[int]]:
    rows = json.loads((DATA / "sft/llamafactory_demo/alpaca_en_demo.json").read_text())[200 : 200 + count]
    return [tok.render([{"role": "user", "content": r["instruction"]}], add_generation_prompt=True).ids for r in rows]


def speculative_part(quant: str, dtype: str, count: int, compile: bool) -> None:
    """Prompt lookup on copying prompts (``quant``, ``dtype``); the float32 model drafted by its own w4a8 copy on chat
    prompts (compiled unless ``--skip-compile``); one request at a time, greedy."""
    draft = {"draft_model": "smollm2-135m-instruct", "draft_quant": "w4a8", "num_speculative_tokens": 5, "compile": compile}
    compare_speculative(f"prompt lookup, {count} copying prompts one at a time ({quant}, dtype {dtype})", copying_prompts,
                        count, quant, dtype, {}, {"speculative": "prompt_lookup"})
    compare_speculative(f"draft model: float32 served, drafted by its own w4a8 copy (5 tokens), {count} chat prompts one at "
                        f"a time{', compiled' if compile else ''}", chat_prompts, count, "none", "float32",
                        {"compile": compile}, draft)


def compare_speculative(title: str, prompts, count: int, quant: str, dtype: str, plain: dict, fast: dict) -> None:
    from puyu.generation import SamplingParams

    params = SamplingParams(max_new_tokens=96, temperature=0)
    print(f"\n{title}")
    outputs = {}
    for mode, config in (("plain", plain), ("speculative", fast)):
        eng, tok = engine(quant, dtype, **config)
        batch = prompts(tok, count)
        eng.generate(batch[:1], SamplingParams(max_new_tokens=4, temperature=0))
        started, results, before = time.perf_counter(), [], eng.stats()
        for prompt in batch:
            results += eng.generate([prompt], params)
        wall = time.perf_counter() - started
        stats = {key: value - before[key] for key, value in eng.stats().items() if key in before}
        outputs[mode] = [r.token_ids for r in results]
        tokens = sum(len(r.token_ids) for r in results)
        accepted = f", accepted {stats['accepted_draft_tokens']}/{stats['draft_tokens']} drafts" if fast is config else ""
        print(f"  {mode:12} {tokens / wall:7.1f} tok/s end to end, {tokens / stats['steps']:.2f} tokens per step{accepted}")
        eng.shutdown()
    print(f"  identical tokens: {outputs['plain'] == outputs['speculative']}")


def throughput_part(settings: list[str], dtype: str, kv_mib: float, context: int) -> None:
    from puyu.generation import SamplingParams

    print(f"\ngreedy decode tok/s (dtype {dtype}) and sequences of {context} tokens in {kv_mib:.0f} MiB of KV cache")
    print(f"{'quant/kv_quant':16}{'1 stream':>10}{'32 streams':>12}{'KV blocks':>11}{'sequences':>11}")
    rows = json.loads((DATA / "sft/llamafactory_demo/alpaca_en_demo.json").read_text())[:32]
    for setting in settings:
        quant, kv_quant = setting.split("/")
        eng, tok = engine(quant, dtype, kv_quant=kv_quant, num_blocks=512, max_num_seqs=32)
        batch = [tok.render([{"role": "user", "content": r["instruction"]}], add_generation_prompt=True).ids for r in rows]
        eng.generate(batch[:2], SamplingParams(max_new_tokens=4, temperature=0))
        rates = []
        for group, new in ((batch[:1], 128), (batch, 64)):
            params = SamplingParams(max_new_tokens=new, temperature=0, ignore_eos=True)
            eng.generate(group, SamplingParams(max_new_tokens=1, temperature=0))  # prompts into the prefix cache: decode is timed
            started = time.perf_counter()
            eng.generate(group, params)
            rates.append(len(group) * new / (time.perf_counter() - started))
        per_block = eng.kv_cache_bytes / eng.blocks.num_blocks
        blocks = int(kv_mib * 2**20 // per_block)
        print(f"{setting:16}{rates[0]:10.1f}{rates[1]:12.1f}{blocks:11d}{blocks // -(-context // eng.config.block_size):11d}")
        eng.shutdown()


def _best_us(fn, calls: int = 20, repeats: int = 7) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e6


@torch.inference_mode()
def gemm_part() -> None:
    from torch import nn

    from puyu.quant.w8a8 import W8A8Linear, int8_gemm, quantize_rows
    from puyu.quant.weight_only import Int8Linear

    paths = ("float32", "bf16", "w8a16 packed", "w8a8 layer", "_int_mm only")
    print(f"\nmicroseconds per call (best of 7), {torch.get_num_threads()} threads")
    print(f"{'rows x in x out':20}" + "".join(f"{p:>14}" for p in paths))
    for rows in (1, 128):
        for fan_in, fan_out in ((576, 960), (576, 576), (576, 3072), (1536, 576), (576, 192), (576, 49152)):
            linear = nn.Linear(fan_in, fan_out, bias=False)
            x = torch.randn(rows, fan_in)
            bf16, xb = nn.Linear(fan_in, fan_out, bias=False).to(torch.bfloat16), x.bfloat16()
            packed, w8a8 = Int8Linear(linear, "packed"), W8A8Linear(linear)
            codes = quantize_rows(x)[0]
            times = [_best_us(lambda: linear(x)), _best_us(lambda: bf16(xb)), _best_us(lambda: packed(x)), _best_us(lambda: w8a8(x)),
                     _best_us(lambda: int8_gemm(codes, w8a8.qweight))]
            print(f"{f'{rows} x {fan_in} x {fan_out}':20}" + "".join(f"{t:14.1f}" for t in times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quant", default="none,w8a16,w4a16")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--profile-batches", default="1,8", help="decode batch sizes of the profile")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-speculative", action="store_true")
    parser.add_argument("--throughput", default="none/none,w8a8/none,none/int8,none/int4,w8a8/int8",
                        help="QUANT/KV_QUANT settings for part 4 ('' skips it)")
    parser.add_argument("--kv-mib", type=float, default=64.0, help="KV memory for the capacity column")
    parser.add_argument("--context", type=int, default=512, help="tokens per sequence for the capacity column")
    parser.add_argument("--gemm", action="store_true", help="part 5: the linear layers alone")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from puyu.hardware import describe_machine

    print(describe_machine())
    quants = args.quant.split(",")
    if not args.skip_profile:
        profile_part(quants, args.dtype, [int(b) for b in args.profile_batches.split(",")], not args.skip_compile)
    if not args.skip_speculative:
        speculative_part(quants[-1], args.dtype, args.prompts, not args.skip_compile)
    if not args.skip_compile:
        startup_part(quants[-1], args.dtype)
    if args.throughput:
        throughput_part(args.throughput.split(","), args.dtype, args.kv_mib, args.context)
    if args.gemm:
        gemm_part()


if __name__ == "__main__":
    main()

"""Serving benchmark: puyu vs llama-cpp-python and transformers on the built-in model, same machine, same run.

Part 1, in-process single-stream greedy decode (tok/s) for float32, bfloat16,
w8a16, w4a16 and w4a8 on puyu's engine (and the served quantizations with the decode step compiled; where ``auto`` picks
puyu's AVX2 int4/int8 kernels, w8a16 and w4a16 on PyTorch's packed kernels too, what they replaced), next to the
memory-bandwidth bound (weight
bytes read per token / measured copy bandwidth), and llama-cpp-python's
``Llama`` on the same GGUF.

Part 2, over HTTP with realistic prompts (MT-Bench first turns and Alpaca
instructions from ../shared/datasets), a fresh server per concurrency level (the servers of a level back to back):
output tokens/s, time to first token and inter-token latency p50/p99, for
``puyu serve``, llama.cpp's ``llama-server`` and llama-cpp-python's server (``--interrupt_requests False``, ``repeat_penalty``
1.0 to match), plus transformers ``generate`` with static batches of the same
size in-process.  ``puyu serve`` runs each ``--quant`` (default w4a16, and w4a8: llama.cpp's Q4_1 x Q8_1 scheme, what
llama-server computes with the Q4_1 GGUF) with ``--compile`` unless ``--no-compile``.
Prints ratios ours / peer, and the server's figures over the same load run in-process (the same requests, as many at a
time, on a fresh engine of the same setting driven from the main thread as ``puyu serve`` drives it; the target: within
10%; below, the server path loses speed it should not).

    python bench/serve.py [--concurrency 1,8,32] [--max-tokens 128] [--quant w4a16,w4a8] [--no-compile]
                          [--llama-server /path/to/llama-server] [--llama-python /path/to/venv/bin/python]
                          [--skip-decode] [--skip-http] [--skip-transformers] [--repeats 3]

The strongest peer is llama.cpp's own ``llama-server`` (``-t 2 -np 8 -cb``), built
from the llama.cpp sources that llama-cpp-python's sdist vendors (PyPI is reachable,
GitHub may not be)::

    pip download --no-deps --no-binary :all: llama-cpp-python -d /tmp/lcp && tar xzf /tmp/lcp/llama_cpp_python-*.tar.gz -C /tmp
    cmake -S /tmp/llama_cpp_python-*/vendor/llama.cpp -B /tmp/llama-build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
    cmake --build /tmp/llama-build --target llama-server -j2      # then --llama-server /tmp/llama-build/bin/llama-server

On a CPU with AMX (``amx_tile`` in /proc/cpuinfo) the native build takes ggml's AMX path for Q4_0/Q4_1/Q8_0/K-quant
matrices, and on the 2-core KVM Xeon of these measurements it died there (SIGSEGV at ``ldtilecfg``; F32 ran). There,
configure without AMX instead: ``-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON
-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF``.

An AVX2 laptop's instruction set on an AVX-512 machine: ``ATEN_CPU_CAPABILITY=avx2`` for puyu (its ``avx_vnni`` kernel
build where the CPU has AVX-VNNI, as Intel's AVX2-only client cores since Alder Lake do; add ``PUYU_KERNELS=avx2`` for
a CPU without it, such as AMD's Zen 3), against llama-server configured with ``-DGGML_NATIVE=OFF -DGGML_AVX=ON
-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF`` and the AMX options off (plus ``-DGGML_AVX_VNNI=ON``
against the ``avx_vnni`` build).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PUYU_DATA_DIR", ROOT.parent / "shared" / "datasets"))


def prompts(count: int) -> list[str]:
    mt = [json.loads(line)["turns"][0] for line in (DATA / "eval/mt_bench/question.jsonl").read_text().splitlines()]
    demo = json.loads((DATA / "sft/llamafactory_demo/alpaca_en_demo.json").read_text())
    alpaca = [r["instruction"] + ("\n" + r["input"] if r["input"] else "") for r in demo]
    pool = mt + alpaca
    random.Random(0).shuffle(pool)
    return pool[:count]


def bandwidth_gbs() -> float:
    """Copy bandwidth (read + write) of a 256 MiB buffer, best of 5."""
    a = torch.empty(64 * 2**20, dtype=torch.float32).fill_(1)
    b = torch.empty_like(a)
    best = min(_timed(lambda: b.copy_(a)) for _ in range(5))
    return 2 * a.numel() * 4 / best / 1e9


def two_thread_scaling() -> float | None:
    """Speed of puyu's int4 product (8 rows, the built-in model's MLP shape) on 2 threads over 1 (None without the
    kernels).  About 2 where the two vCPUs are cores of their own; well below where they share one core's vector
    ports (hyperthreads of one core, as a KVM host may hand out), which slows port-bound integer products most."""
    from puyu.kernels import gemv
    from puyu.kernels.build import available

    if not available():
        return None
    codes, table = gemv.pack_int4(torch.randint(0, 16, (3072, 576)), torch.full((3072, 18), 0.01), torch.zeros(3072, 18))
    x = torch.randn(8, 576)
    threads = torch.get_num_threads()
    best = {1: float("inf"), 2: float("inf")}
    try:
        for n in (1, 2, 1, 2):  # alternated: the machine drifts
            torch.set_num_threads(n)
            best[n] = min(best[n], *(_timed(lambda: gemv.int4_matmul(x, codes, table, 32, 3072)) for _ in range(50)))
    finally:
        torch.set_num_threads(threads)
    return best[1] / best[2]


def machine_state(bandwidth: float) -> str:
    """The benchmark's header: CPU flags, the kernel build, and how the machine performs right now (copy ``bandwidth``
    in GB/s, two-thread scaling): figures from one box differ with both, so each run records them."""
    from puyu.hardware import describe_machine
    from puyu.kernels.build import available, build_name

    scaling = two_thread_scaling()
    return (f"{describe_machine()}, puyu's kernel build {build_name() if available() else 'none'}\n"
            f"now: copy bandwidth {bandwidth:.1f} GB/s, int4 product on 2 threads "
            f"{f'{scaling:.2f}x' if scaling else 'n/a'} of 1 thread")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def weight_bytes_per_token(model) -> int:
    """Bytes of every weight a decode step reads (all linear layers; one embedding row is negligible)."""
    total = 0
    for module in model.modules():
        if module is model.model.embed_tokens:
            continue
        for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            total += tensor.numel() * tensor.element_size()
    return total


def decode_part(tokens: int, llama_python: str | None, compiled: list[str], bw: float) -> None:
    """Part 1 (``bw``: the measured copy bandwidth, GB/s; ``compiled``: the quantizations also run compiled)."""
    from puyu.engine import EngineConfig, LLMEngine
    from puyu.generation import SamplingParams
    from puyu.model import load_model
    from puyu.model.registry import resolve
    from puyu.quant.weight_only import resolve_kernel

    print(f"{'setting':18} {'tok/s':>8} {'MB/token':>9} {'bound tok/s':>12} {'of bound':>9}")
    rates = {}
    # The quantized settings load as `puyu serve --quant` does (dtype auto): the server check below compares like with like.
    settings = [("float32", "float32", "none", "auto", False), ("bfloat16", "bfloat16", "none", "auto", False),
                ("w8a16", "auto", "w8a16", "auto", False), ("w4a16", "auto", "w4a16", "auto", False),
                ("w4a8", "auto", "w4a8", "auto", False)]
    settings += [(f"{quant} + compile", "auto", quant, "auto", True) for quant in compiled]
    if resolve_kernel("auto", torch.device("cpu")) != "packed":  # what auto replaced, for the ratio
        settings[4:4] = [("w8a16 packed", "auto", "w8a16", "packed", False), ("w4a16 packed", "auto", "w4a16", "packed", False)]
    for name, dtype, quant, kernel, compile in settings:
        model, tokenizer = load_model("smollm2-135m-instruct", dtype=dtype, device="cpu", quantized=quant != "none")
        started = time.perf_counter()
        engine = LLMEngine(model, tokenizer, EngineConfig(quant=quant, quant_kernel=kernel, compile=compile))
        if compile:
            print(f"  (compiled in {time.perf_counter() - started:.0f} s)")
        prompt = tokenizer.render([{"role": "user", "content": "Write a long story about a dragon."}], add_generation_prompt=True).ids
        run = lambda n: engine.generate([prompt], SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True))  # noqa: E731
        run(4)
        rate = (tokens - 1) / (min(_timed(lambda: run(tokens)) for _ in range(2)) - min(_timed(lambda: run(1)) for _ in range(2)))
        per_token = weight_bytes_per_token(model)
        bound = bw * 1e9 / per_token
        rates[name] = rate
        print(f"{name:18} {rate:8.1f} {per_token / 1e6:9.1f} {bound:12.1f} {rate / bound:9.2f}   ({str(model.dtype)[6:]})")
        engine.shutdown()
    if llama_python:
        code = (
            "import sys, time; from llama_cpp import Llama\n"
            f"m = Llama(model_path={str(resolve('smollm2-135m-instruct'))!r}, n_threads=2, n_ctx=2048, verbose=False)\n"
            "p = '<|im_start|>user\\nWrite a long story about a dragon.<|im_end|>\\n<|im_start|>assistant\\n'\n"
            "def run(n):\n    t = time.perf_counter(); m.create_completion(p, max_tokens=n, temperature=0, repeat_penalty=1.0); "
            "return time.perf_counter() - t\n"
            f"run(4); n = {tokens}\n"
            "print((n - 1) / (min(run(n) for _ in range(2)) - min(run(1) for _ in range(2))))\n"
        )
        out = subprocess.run([llama_python, "-c", code], capture_output=True, text=True, timeout=600)
        peer = float(out.stdout.strip().splitlines()[-1])
        print(f"{'llama-cpp-python':18} {peer:8.1f}   (Q4_1 GGUF)")
        print("ratio to llama-cpp-python: " + ", ".join(f"{name} {rate / peer:.2f}" for name, rate in rates.items()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Ready means a one-token completion answers 200: llama-server lists its model while still loading it (503 then).
    probe = {"model": "smol", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for _ in range(600):
        try:
            if httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=probe, timeout=120).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not start: {' '.join(cmd)}")


async def load(url: str, model: str, questions: list[str], concurrency: int, max_tokens: int) -> dict[str, float]:
    import httpx

    gate = asyncio.Semaphore(concurrency)
    ttfts, itls, tokens = [], [], []

    async def one(http, question):
        async with gate:
            body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
                    "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "repeat_penalty": 1.0}
            start = last = time.perf_counter()
            first, count, chunks = None, 0, 0
            async with http.stream("POST", f"{url}/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        count = chunk["usage"]["completion_tokens"]
                    if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                        chunks += 1
                        now = time.perf_counter()
                        if first is None:
                            first = now - start
                        else:
                            itls.append(now - last)
                        last = now
            ttfts.append(first or 0.0)
            tokens.append(count or chunks)  # a server without usage in streams: one chunk per token

    # A fresh connection per request: llama-server (cpp-httplib) closes idle keep-alive connections on its own, and a
    # request sent on one as it closes fails with "Server disconnected" (seen at c=1 after a few requests).
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        began = time.perf_counter()
        await asyncio.gather(*(one(http, q) for q in questions))
        wall = time.perf_counter() - began
    return _summary(sum(tokens), wall, ttfts, itls)


def _summary(tokens: int, wall: float, ttfts: list[float], itls: list[float]) -> dict[str, float]:
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] if len(xs) > 1 else (xs[0] if xs else 0.0)  # noqa: E731
    return {"tok/s": tokens / wall, "ttft p50": q(ttfts, 50), "ttft p99": q(ttfts, 99), "itl p50": q(itls, 50), "itl p99": q(itls, 99)}


def closed_loop(quant: str, compile: bool, concurrency: int, max_tokens: int) -> dict[str, float]:
    """Part 2's load without HTTP: the same requests, ``concurrency`` at a time (the next one submitted as one finishes),
    on a fresh engine (as ``puyu serve --quant quant`` loads it) driven from the main thread as ``puyu serve`` drives it.
    The server's figures over these are what the HTTP path costs under load.  Run in a subprocess of its own."""
    import threading

    from puyu.engine import EngineConfig, LLMEngine
    from puyu.generation import SamplingParams
    from puyu.model import load_model

    torch.set_num_threads(2)
    model, tokenizer = load_model("smollm2-135m-instruct", dtype="auto", device="cpu", quantized=quant != "none")
    engine = LLMEngine(model, tokenizer, EngineConfig(quant=quant, compile=compile))
    params = SamplingParams(max_new_tokens=max_tokens, temperature=0)
    queue = [tokenizer.render([{"role": "user", "content": q}], add_generation_prompt=True).ids
             for q in prompts(max(2 * concurrency, 8))][::-1]
    ttfts, itls, done, lock = [], [], threading.Event(), threading.Lock()
    tokens = open_requests = 0

    def submit() -> None:  # from the client thread at first, then from the engine's (where sinks run); under `lock`
        nonlocal open_requests
        open_requests += 1
        started, last = time.perf_counter(), None

        def sink(event) -> None:
            nonlocal last, tokens, open_requests
            now = time.perf_counter()
            if event.delta is not None and event.delta.text:
                if last is None:
                    ttfts.append(now - started)
                else:
                    itls.append(now - last)
                last = now
            if event.finished:
                with lock:
                    tokens += event.completion_tokens
                    open_requests -= 1
                    if queue:
                        submit()
                    elif not open_requests:
                        done.set()

        engine.submit(queue.pop(), params, sink)

    def client() -> None:
        with lock:
            for _ in range(min(concurrency, len(queue))):
                submit()
        done.wait()
        engine.shutdown()

    began = time.perf_counter()
    engine.run(ready=threading.Thread(target=client).start)
    return _summary(tokens, time.perf_counter() - began, ttfts, itls)


def fresh_server_load(command, concurrency: int, max_tokens: int) -> dict[str, float]:
    """Start the server ``command(port)`` anew, run one concurrency level against it, stop it."""
    port = free_port()
    proc = start(command(port), port)
    try:
        return asyncio.run(load(f"http://127.0.0.1:{port}/v1", "smol", prompts(max(2 * concurrency, 8)), concurrency, max_tokens))
    finally:
        proc.terminate()
        proc.wait(60)


def in_process_load(quant: str, compile: bool, concurrency: int, max_tokens: int) -> dict[str, float]:
    """:func:`closed_loop` in a fresh process, as each server level gets a fresh server."""
    spec = json.dumps([quant, compile, concurrency, max_tokens])
    out = subprocess.run([sys.executable, __file__, "--closed-loop", spec], capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise RuntimeError(f"the in-process load failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def transformers_static(questions: list[str], batch: int, max_tokens: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    from puyu.model.loader import convert_gguf
    from puyu.model.registry import resolve
    from puyu.tokenizer import Tokenizer

    folder = convert_gguf(resolve("smollm2-135m-instruct"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    tokenizer = Tokenizer.from_folder(folder)
    total, began, ttfts = 0, time.perf_counter(), []
    for i in range(0, len(questions), batch):
        group = [tokenizer.render([{"role": "user", "content": q}], add_generation_prompt=True).ids for q in questions[i : i + batch]]
        width = max(map(len, group))
        ids = torch.tensor([[tokenizer.eos_id] * (width - len(g)) + g for g in group])
        mask = torch.tensor([[0] * (width - len(g)) + [1] * len(g) for g in group])
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.eos_id)
            prefill = time.perf_counter() - start
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_id, eos_token_id=tokenizer.stop_token_ids)
        new = out[:, width:]
        total += int(sum(((row != tokenizer.eos_id).cumsum(0) > 0).sum() for row in new))
        ttfts += [start - began + prefill] * len(group)
    return {"tok/s": total / (time.perf_counter() - began), "ttft p50": statistics.median(ttfts), "ttft p99": max(ttfts)}


def http_part(levels: list[int], max_tokens: int, quants: list[str], compile: bool, llama_python: str | None,
              llama_server: str | None = None, transformers: bool = True,
              repeats: int = 1) -> None:
    """Part 2.  Each level runs ``repeats`` rounds of every server (and of each served setting's load in-process, the
    check of the server path) back to back; the table shows each figure's median over the rounds, the ratios each
    round's (ours / peer within one round, minutes apart) and their median."""
    from puyu.model.registry import resolve

    gguf = str(resolve("smollm2-135m-instruct"))
    ours = [f"puyu ({quant})" for quant in quants]
    servers = {name: lambda port, quant=quant: [sys.executable, "-m", "puyu", "serve", "smollm2-135m-instruct", "--port", str(port),
                                                "--quant", quant, "--served-model-name", "smol",
                                                "--compile" if compile else "--no-compile"]
               for name, quant in zip(ours, quants)}
    if llama_server:  # llama.cpp's own server: 2 threads, 8 slots, continuous batching
        servers["llama-server"] = lambda port: [llama_server, "-m", gguf, "-t", "2", "-np", "8", "-cb", "-c", "16384",
                                                "--port", str(port), "-a", "smol"]
    if llama_python:
        servers["llama-cpp-python server"] = lambda port: [llama_python, "-m", "llama_cpp.server", "--model", gguf, "--n_threads", "2",
                                                           "--n_ctx", "8192", "--port", str(port), "--interrupt_requests", "False",
                                                           "--model_alias", "smol"]
    runs = {name: lambda c, command=command: fresh_server_load(command, c, max_tokens) for name, command in servers.items()}
    for quant in quants:  # the same load on the same engine without HTTP, in a fresh process of its own
        runs[f"in-process ({quant})"] = lambda c, quant=quant: in_process_load(quant, compile, c, max_tokens)
    rounds: dict[str, dict[int, list[dict[str, float]]]] = {}
    for c in levels:  # level by level, the servers back to back: this class of machine drifts by 30% in minutes
        for _ in range(repeats):
            for name, run in runs.items():
                rounds.setdefault(name, {}).setdefault(c, []).append(run(c))
    if transformers:
        rounds["transformers static batch"] = {c: [transformers_static(prompts(max(2 * c, 8)), c, max_tokens)] * repeats
                                               for c in levels}
    results = {name: {c: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for c, runs in by_level.items()}
               for name, by_level in rounds.items()}

    print(f"\n{'server':28} {'conc':>4} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8}")
    for name, by_level in results.items():
        for c, r in by_level.items():
            print(f"{name:28} {c:4d} {r['tok/s']:8.1f} {r['ttft p50']:9.2f} {r['ttft p99']:9.2f} "
                  f"{r.get('itl p50', float('nan')):8.3f} {r.get('itl p99', float('nan')):8.3f}")
    for name, quant in zip(ours, quants):
        # The same requests on the same engine without HTTP: the target is within 10%; far below that, the server path
        # (threads, HTTP, cache size) costs something it should not.
        alone = rounds[f"in-process ({quant})"]
        slow = [c for c, level in rounds[name].items()
                if statistics.median(a["tok/s"] / b["tok/s"] for a, b in zip(level, alone[c])) < 0.9]
        verdict = f"SERVER PATH MORE THAN 10% SLOWER THAN IN-PROCESS at c={', '.join(map(str, slow))}" if slow else "ok"
        text = ", ".join(f"c={c}: {_ratios(level, alone[c])}" for c, level in rounds[name].items())
        print(f"server / in-process, the same load ({quant}): {text} ({verdict})")
    for name, by_level in rounds.items():
        for mine in ours if name not in ours and not name.startswith("in-process") else []:
            text = ", ".join(f"c={c}: {_ratios(rounds[mine][c], runs)}" for c, runs in by_level.items())
            print(f"throughput ratio {mine} / {name}: {text}")


def _ratios(ours: list[dict[str, float]], peer: list[dict[str, float]]) -> str:
    """The median of each round's output tok/s ratio, and the rounds' ratios when more than one."""
    each = [a["tok/s"] / b["tok/s"] for a, b in zip(ours, peer)]
    return f"{statistics.median(each):.2f}" + (f" ({', '.join(f'{x:.2f}' for x in each)})" if len(each) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--quant", default="w4a16,w4a8", help="the served quantizations, comma-separated")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="serve without torch.compile of the decode step")
    parser.add_argument("--llama-python", default=None, help="a Python with llama-cpp-python[server] installed (the peer)")
    parser.add_argument("--llama-server", default=None, help="llama.cpp's llama-server binary (the strongest peer; build recipe above)")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-transformers", action="store_true", help="part 2 without transformers' static batches")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every server per level (medians and each round's ratio)")
    parser.add_argument("--closed-loop", help=argparse.SUPPRESS)  # internal: one in-process load (see in_process_load)
    args = parser.parse_args()
    if args.closed_loop:
        print(json.dumps(closed_loop(*json.loads(args.closed_loop))))
        return
    torch.set_num_threads(2)
    bw = bandwidth_gbs()
    print(machine_state(bw))
    quants = args.quant.split(",")
    compiled = quants if args.compile else []
    if not args.skip_decode:
        decode_part(args.decode_tokens, args.llama_python, compiled, bw)
    if not args.skip_http:
        http_part([int(c) for c in args.concurrency.split(",")], args.max_tokens, quants, args.compile, args.llama_python,
                  args.llama_server, not args.skip_transformers, args.repeats)


if __name__ == "__main__":
    main()

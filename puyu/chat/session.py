"""A multi-turn conversation with a model, kept within its context window.

:class:`ChatSession` holds the system prompt and the turns, renders them with
the model's template, and when the prompt plus room for the reply no longer
fits the context it drops the oldest turns (never the system prompt, never the
newest user message) and reports how many it dropped.  With a vision-language
model, :meth:`ChatSession.attach` adds an image to the next user message.  The
terminal chat and the web UI both drive it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from puyu.api import LLM
from puyu.errors import ConfigError, ContextLengthError
from puyu.generation import SamplingParams, stream
from puyu.model.vlm.prompt import PromptImages


@dataclass
class ChatSession:
    llm: LLM
    params: SamplingParams | None = None  # None: the model's recommended sampling (LLM.sampling)
    system: str | None = None
    turns: list[dict] = field(default_factory=list)  # user/assistant messages, oldest first
    dropped: int = 0  # messages dropped by the last fit
    images: list[str] = field(default_factory=list)  # attached to the next user message

    def __post_init__(self) -> None:
        self.params = self.params or self.llm.sampling()

    def attach(self, path: str) -> None:
        """Show the image at ``path`` with the next message (checked now, so a bad file is named at once).

        Raises:
            ConfigError: the model reads text only, or the file is not a readable image.
        """
        from puyu.model.vlm.images import load_image

        if not self.llm.takes_images:
            raise ConfigError(f"{self.llm.name} reads text only; load a vision-language model folder to ask about images")
        load_image(Path(path).expanduser())
        self.images.append(str(Path(path).expanduser()))

    def clear(self) -> None:
        self.turns.clear()

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def _fit(self) -> tuple[list[int], PromptImages | None]:
        """Prompt ids and images of the conversation, dropping oldest turns until the reply has room."""
        context = self.llm.context_length
        room = min(self.params.max_new_tokens, context // 2)
        self.dropped = 0
        while True:
            ids, images = self.llm.prompt(self.messages())
            if len(ids) + room <= context:
                return ids, images
            if len(self.turns) <= 1:
                raise ContextLengthError(
                    f"the message needs {len(ids)} tokens plus {room} for the reply, but the context window is "
                    f"{context}; shorten the message or the system prompt"
                )
            # Drop the oldest user turn with the replies that followed it.
            cut = next((i for i, t in enumerate(self.turns[1:], 1) if t["role"] == "user"), len(self.turns) - 1)
            del self.turns[:cut]
            self.dropped += cut

    def send(self, text: str) -> Iterator[str]:
        """Add a user message and stream the reply; the reply joins the history as it is produced,
        so stopping the iterator early (Ctrl-C) keeps what was shown."""
        parts = [{"type": "image", "path": path} for path in self.images]
        self.turns.append({"role": "user", "content": parts + [{"type": "text", "text": text}] if parts else text})
        try:
            prompt, images = self._fit()
        except ContextLengthError:
            self.turns.pop()
            raise
        self.images = []
        reply = {"role": "assistant", "content": ""}
        self.turns.append(reply)
        for delta in stream(self.llm.model, self.llm.tokenizer, [prompt], self.params, [images]):
            if delta.text:
                reply["content"] += delta.text
                yield delta.text

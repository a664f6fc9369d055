"""What every route handler needs: the served engine and name, metrics, the optional embedder, and small shared helpers.

``create_app`` stores one :class:`ServerState` on ``app.state.server``;
handlers receive it through the :func:`server_state` dependency, so each route
module is a plain ``APIRouter`` with module-level handlers.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from puyu.engine import LLMEngine
from puyu.generation.sampling import recommended_sampling
from puyu.model.embedder import Embedder
from puyu.serve.bridge import Job, Running
from puyu.serve.errors import OpenAIError
from puyu.serve.metrics import ServerMetrics


@dataclass
class ServerState:
    """The engine behind the app, the model id clients use, the server's metrics, and a sentence embedder if any."""

    engine: LLMEngine
    name: str
    metrics: ServerMetrics
    embedder: Embedder | None = None
    image_dir: Path | None = None  # local image paths are read only under this folder
    created: int = field(default_factory=lambda: int(time.time()))

    def check_images(self, messages: list[dict]) -> None:
        """Refuse (400) image parts that name a local file outside :attr:`image_dir` (data: URLs are always fine)."""
        for message in messages:
            for part in message["content"] if isinstance(message.get("content"), list) else []:
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if part.get("type") != "image_url" or not isinstance(url, str) or url.startswith(("data:", "http://", "https://")):
                    continue
                path = Path(url.removeprefix("file://")).expanduser()
                if self.image_dir is None:
                    raise OpenAIError(400, "this server reads no local image files; send the image as a data: URL "
                                           "(or start it with --image-dir FOLDER)", param="messages")
                if not path.resolve().is_relative_to(self.image_dir.resolve()):
                    raise OpenAIError(400, f"{url} is outside the image folder this server reads ({self.image_dir})", param="messages")

    @property
    def embedder_id(self) -> str | None:
        """The embedder's model id: ``all-MiniLM-L6-v2`` for the default, else its folder's name."""
        return None if self.embedder is None else Path(self.embedder.name).name

    def names_embedder(self, name: str) -> bool:
        """Whether ``name`` is the embedder's id or its full name (a folder's path, as a knowledge base records it)."""
        return self.embedder is not None and name in (self.embedder_id, self.embedder.name)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @functools.cached_property
    def recommended_sampling(self) -> dict[str, float]:
        """What the served model's ``generation_config.json`` recommends for sampling fields a request leaves out."""
        return recommended_sampling(self.engine.tokenizer)

    def run(self, jobs: list[Job]) -> Running:
        """Submit ``jobs`` (raises before any response when the engine refuses one)."""
        return Running(self.engine, self.metrics, jobs)

    def check_model(self, name: str) -> None:
        """Refuse (404) a request for any model but the served LLM."""
        if name != self.name:
            also = f", and the embedder {self.embedder_id!r} on /v1/embeddings only" if self.embedder else ""
            raise OpenAIError(404, f"the model {name!r} does not exist; this server serves {self.name!r}{also}",
                              code="model_not_found", param="model")

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)


async def server_state(request: Request) -> ServerState:
    """FastAPI dependency: the :class:`ServerState` of the app serving ``request`` (async: FastAPI runs a plain
    function dependency in its thread pool, a thread hop per request and a pool of idle threads under load)."""
    return request.app.state.server

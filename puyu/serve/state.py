"""What every route handler needs: the served engine and name, metrics, and small shared helpers.

``create_app`` stores one :class:`ServerState` on ``app.state.server``;
handlers receive it through the :func:`server_state` dependency, so each route
module is a plain ``APIRouter`` with module-level handlers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from puyu.engine import LLMEngine
from puyu.serve.bridge import Job, Running
from puyu.serve.errors import OpenAIError
from puyu.serve.metrics import ServerMetrics


@dataclass
class ServerState:
    """The engine behind the app, the model id clients use, and the server's metrics."""

    engine: LLMEngine
    name: str
    metrics: ServerMetrics
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def run(self, jobs: list[Job]) -> Running:
        """Submit ``jobs`` (raises before any response when the engine refuses one)."""
        return Running(self.engine, self.metrics, jobs)

    def check_model(self, name: str) -> None:
        if name != self.name:
            raise OpenAIError(404, f"the model {name!r} does not exist; this server serves {self.name!r}",
                              code="model_not_found", param="model")

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)


def server_state(request: Request) -> ServerState:
    """FastAPI dependency: the :class:`ServerState` of the app serving ``request``."""
    return request.app.state.server

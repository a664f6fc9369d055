"""``GET /health``, ``GET /metrics`` (Prometheus) and ``GET /v1/models`` (the served model, then the embedder if any)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from puyu.serve.state import ServerState, server_state

router = APIRouter()


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/metrics")
async def prometheus(server: ServerState = Depends(server_state)):
    return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(server: ServerState = Depends(server_state)):
    cards = [{"id": server.name, "object": "model", "created": server.created, "owned_by": "puyu",
              "max_model_len": server.engine.max_model_len}]
    if server.embedder:
        cards.append({"id": server.embedder_id, "object": "model", "created": server.created, "owned_by": "puyu",
                      "max_model_len": server.embedder.max_tokens, "dimensions": server.embedder.dimension})
    return {"object": "list", "data": cards}

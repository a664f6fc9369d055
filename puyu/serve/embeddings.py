"""``POST /v1/embeddings`` in OpenAI's format: the served model's mean-pooled hidden states.

Each input (text, or token ids) runs once through the served model without a
KV cache (``output="hidden"``: the final-normed hidden states); the vector is
their mean over the input's tokens, scaled to unit length, so a dot product is
the cosine similarity.  Its dimension is the model's hidden size.
``encoding_format: base64`` (what the official client asks for by default) is
little-endian float32, as OpenAI sends it.  An input longer than the model's
window, an empty one, or ``dimensions`` other than the hidden size is refused
with a 400 that says so.  The forward passes run in a worker thread, beside
the engine's own (they share only the weights).
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import torch
from fastapi import APIRouter, Depends

from puyu.serve.errors import OpenAIError
from puyu.serve.protocol import EmbeddingRequest
from puyu.serve.state import ServerState, server_state

router = APIRouter()


def mean_pooled(model, ids: list[int]) -> np.ndarray:
    """Unit-length mean of the final hidden states of ``ids`` (float32 ``[hidden]``)."""
    with torch.inference_mode():
        hidden = model(torch.tensor([ids], device=model.device), output="hidden")[0].float().mean(0)
    return torch.nn.functional.normalize(hidden, dim=0).cpu().numpy()


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, server: ServerState = Depends(server_state)):
    server.check_model(body.model)
    model, window = server.engine.model, server.engine.max_model_len
    if body.dimensions is not None and body.dimensions != model.config.hidden_size:
        raise OpenAIError(400, f"dimensions {body.dimensions} is not available: this model's embeddings have "
                               f"{model.config.hidden_size}; leave dimensions out", param="dimensions")
    batch = [server.tokenizer.encode(item, add_special_tokens=False) if isinstance(item, str) else item for item in body.inputs()]
    for index, ids in enumerate(batch):
        if not ids:
            raise OpenAIError(400, f"input {index} is empty; send text with at least one token", param="input")
        if len(ids) > window:
            raise OpenAIError(400, f"input {index} has {len(ids)} tokens, more than the model's {window}; shorten or split it",
                              param="input")
        if max(ids) >= model.config.vocab_size or min(ids) < 0:
            raise OpenAIError(400, f"input {index} holds token ids outside the vocabulary (0..{model.config.vocab_size - 1})",
                              param="input")
    vectors = await asyncio.to_thread(lambda: [mean_pooled(model, ids) for ids in batch])
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" else v.tolist()}
            for i, v in enumerate(vectors)]
    tokens = sum(len(ids) for ids in batch)
    return {"object": "list", "data": data, "model": server.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

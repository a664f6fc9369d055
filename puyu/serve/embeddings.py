"""``POST /v1/embeddings`` in OpenAI's format: the server's sentence embedder, or the served model's pooled hidden states.

A request naming the embedder (``puyu serve --embedder``, listed in
``/v1/models`` under its own id; its full name, a folder's path as a knowledge
base records it, is accepted too) is encoded by that sentence-transformers
model exactly as the knowledge base encodes (:meth:`puyu.model.embedder.Embedder.embed`:
unit length, texts past its window truncated), so a client gets the vectors
``puyu kb`` stores.  It takes text only: token ids belong to another tokenizer.
A request naming the served model runs each input (text, or token ids) once
through it without a KV cache (``output="hidden"``: the final-normed hidden
states); the vector is their mean over the input's tokens, scaled to unit
length.  Its dimension is the model's hidden size; an input longer than the
model's window is refused.  Either way an empty input, or ``dimensions`` other
than the vectors' size, is refused with a 400 that says so, any other model
with the server's 404, and ``encoding_format: base64`` (what the official
client asks for by default) is little-endian float32, as OpenAI sends it.
Encoding runs in a worker thread, beside the engine's own (the pooled path
shares only the weights; the embedder serializes its own calls).
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import torch
from fastapi import APIRouter, Depends

from puyu.model.embedder import Embedder
from puyu.serve.errors import OpenAIError
from puyu.serve.protocol import EmbeddingRequest
from puyu.serve.state import ServerState, server_state

router = APIRouter()


def mean_pooled(model, ids: list[int]) -> np.ndarray:
    """Unit-length mean of the final hidden states of ``ids`` (float32 ``[hidden]``)."""
    with torch.inference_mode():
        hidden = model(torch.tensor([ids], device=model.device), output="hidden")[0].float().mean(0)
    return torch.nn.functional.normalize(hidden, dim=0).cpu().numpy()


def check_dimensions(body: EmbeddingRequest, size: int, whose: str) -> None:
    if body.dimensions is not None and body.dimensions != size:
        raise OpenAIError(400, f"dimensions {body.dimensions} is not available: {whose} embeddings have {size}; "
                               "leave dimensions out", param="dimensions")


def empty_input(index: int) -> OpenAIError:
    return OpenAIError(400, f"input {index} is empty; send text with at least one token", param="input")


async def sentence_embeddings(embedder: Embedder, name: str, body: EmbeddingRequest) -> tuple[list[np.ndarray], int]:
    """The embedder's vectors of the request's texts, and their token count."""
    check_dimensions(body, embedder.dimension, f"{name}'s")
    texts = body.inputs()
    if not all(isinstance(text, str) for text in texts):
        raise OpenAIError(400, f"the embedder {name!r} takes text, not token ids; send strings (LangChain's "
                               "OpenAIEmbeddings: check_embedding_ctx_length=False)", param="input")

    def encode() -> tuple[list[np.ndarray], int]:  # in the worker thread: the embedder's tokenizer may be busy
        counts = embedder.count(texts)
        if 0 in counts:
            raise empty_input(counts.index(0))
        return list(embedder.embed(texts)), sum(counts)

    return await asyncio.to_thread(encode)


async def pooled_embeddings(server: ServerState, body: EmbeddingRequest) -> tuple[list[np.ndarray], int]:
    """The served model's mean-pooled hidden states of the request's inputs, and their token count."""
    model, window = server.engine.model, server.engine.max_model_len
    check_dimensions(body, model.config.hidden_size, "this model's")
    batch = [server.tokenizer.encode(item, add_special_tokens=False) if isinstance(item, str) else item for item in body.inputs()]
    for index, ids in enumerate(batch):
        if not ids:
            raise empty_input(index)
        if len(ids) > window:
            raise OpenAIError(400, f"input {index} has {len(ids)} tokens, more than the model's {window}; shorten or split it",
                              param="input")
        if max(ids) >= model.config.vocab_size or min(ids) < 0:
            raise OpenAIError(400, f"input {index} holds token ids outside the vocabulary (0..{model.config.vocab_size - 1})",
                              param="input")
    vectors = await asyncio.to_thread(lambda: [mean_pooled(model, ids) for ids in batch])
    return vectors, sum(len(ids) for ids in batch)


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, server: ServerState = Depends(server_state)):
    if server.names_embedder(body.model):
        name = server.embedder_id
        vectors, tokens = await sentence_embeddings(server.embedder, name, body)
    else:
        server.check_model(body.model)
        name = server.name
        vectors, tokens = await pooled_embeddings(server, body)
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" else v.tolist()}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

"""``POST /v1/embeddings`` against a real `puyu serve`: the official client, LangChain's OpenAIEmbeddings, and errors."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from tests.serve.conftest import API_KEY

HIDDEN = 64  # the tiny model's hidden size


def test_official_client_gets_unit_vectors_of_the_hidden_size(client):
    result = client.embeddings.create(model="tiny", input=["hello world", "the quick brown fox", "hello world"])
    vectors = np.array([item.embedding for item in result.data])
    assert [item.index for item in result.data] == [0, 1, 2] and vectors.shape == (3, HIDDEN)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-6) and not np.allclose(vectors[0], vectors[1], atol=1e-3)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 3
    as_floats = client.embeddings.create(model="tiny", input="hello world", encoding_format="float").data[0].embedding
    assert np.allclose(as_floats, vectors[0], atol=1e-6)  # the client's default is base64; both decode alike
    token_ids = client.embeddings.create(model="tiny", input=[[5, 6, 7]]).data[0].embedding
    assert len(token_ids) == HIDDEN


def test_langchain_openai_embeddings(server):
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: otherwise LangChain tokenizes with tiktoken, whose tables come from the network
    lc = OpenAIEmbeddings(model="tiny", base_url=server.url, api_key=API_KEY, check_embedding_ctx_length=False)
    documents = lc.embed_documents(["LMDeploy serves models.", "Chroma stores vectors."])
    assert len(documents) == 2 and all(len(v) == HIDDEN for v in documents)
    assert np.allclose(lc.embed_query("LMDeploy serves models."), documents[0], atol=1e-6)


def test_bad_embedding_requests_say_what_is_wrong(client):
    with pytest.raises(openai.BadRequestError, match="dimensions 8 is not available.*64"):
        client.embeddings.create(model="tiny", input="x", dimensions=8)
    with pytest.raises(openai.BadRequestError, match="input 1 has 5000 tokens, more than the model's 1024"):
        client.embeddings.create(model="tiny", input=[[1], [5] * 5000])
    with pytest.raises(openai.BadRequestError, match="input 0 is empty"):
        client.embeddings.create(model="tiny", input=[""])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.embeddings.create(model="gpt-4", input="x")

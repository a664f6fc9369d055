"""``puyu serve --embedder``: the knowledge base's embedder on ``/v1/embeddings`` of a real server, used through the
official client, LangChain's OpenAIEmbeddings and langchain-chroma over a knowledge base puyu built."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import numpy as np
import openai
import pytest

from tests.serve.conftest import API_KEY, start_server, stop_server

TEXTS = ["How do I start the api_server?", "AWQ quantizes weights to 4 bits.", "量化模型", "word " * 400]  # the last passes the window
QUERY = "How do I quantize to 4 bits?"
DOCS = {"serve.md": "# Serving\n\nThe API server listens on port 23333 by default.\n",
        "quant.md": "# Quantization\n\nAWQ quantizes weights to 4 bits with lmdeploy lite auto_awq.\n",
        "chat.md": "# Chat\n\nThe terminal chat keeps the conversation history between turns.\n"}


@pytest.fixture(scope="module")
def embedder():
    from puyu.model.embedder import load_embedder

    return load_embedder("all-MiniLM-L6-v2", "cpu")


@pytest.fixture(scope="module")
def server(tiny_server_model, tmp_path_factory):
    s = start_server(tiny_server_model, "--embedder", "all-MiniLM-L6-v2", "--embed-device", "cpu",
                     log=tmp_path_factory.mktemp("log") / "server.log")
    yield s
    stop_server(s)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)


def langchain_embeddings(server):
    from langchain_openai import OpenAIEmbeddings

    # sends the texts themselves: LangChain's own chunking would tokenize with tiktoken, whose tables come from the network
    return OpenAIEmbeddings(model="all-MiniLM-L6-v2", base_url=server.url, api_key=API_KEY, check_embedding_ctx_length=False,
                            tiktoken_enabled=False, max_retries=0)


def test_models_lists_the_embedder_beside_the_served_model(server):
    cards = httpx.get(f"{server.url}/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"]
    assert [card["id"] for card in cards] == ["tiny", "all-MiniLM-L6-v2"] and cards[1]["dimensions"] == 384


def test_official_client_gets_the_vectors_the_knowledge_base_stores(client, embedder):
    expected = embedder.embed(TEXTS)
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)  # base64, the client's default
    vectors = np.array([item.embedding for item in result.data])
    assert result.model == "all-MiniLM-L6-v2" and [item.index for item in result.data] == [0, 1, 2, 3]
    assert vectors.shape == (4, 384) and np.abs(vectors - expected).max() < 1e-5
    assert result.usage.prompt_tokens == sum(embedder.count(TEXTS))
    as_floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[0], encoding_format="float").data[0].embedding
    assert np.abs(np.array(as_floats) - expected[0]).max() < 1e-5
    pooled = client.embeddings.create(model="tiny", input=TEXTS[0]).data[0].embedding
    assert len(pooled) == 64  # the served model's name keeps its mean-pooled hidden states


def test_langchain_openai_embeddings_match_the_embedder(server, embedder):
    lc = langchain_embeddings(server)
    documents = lc.embed_documents(TEXTS[:2])
    assert [len(v) for v in documents] == [384, 384]
    assert np.abs(np.array(documents) - embedder.embed(TEXTS[:2])).max() < 1e-5
    assert np.abs(np.array(lc.embed_query(TEXTS[0])) - documents[0]).max() < 1e-5


def test_langchain_chroma_in_another_process_queries_a_puyu_knowledge_base_through_the_server(server, embedder, tmp_path):
    from puyu.rag import KnowledgeBase

    (tmp_path / "docs").mkdir()
    for name, text in DOCS.items():
        (tmp_path / "docs" / name).write_text(text)
    kb = KnowledgeBase.create("lc", embedder=embedder, home=tmp_path / "kb")
    try:
        kb.build([tmp_path / "docs"])
        [dense] = kb.search(QUERY, k=1, mode="dense")
    finally:
        kb.close()
    # what the README shows: another program opens the collection puyu wrote, querying with the server's embeddings
    script = f"""
import json
from langchain_chroma import Chroma
from langchain_openai import OpenAIEmbeddings
embeddings = OpenAIEmbeddings(model="all-MiniLM-L6-v2", base_url={server.url!r}, api_key={API_KEY!r},
                              check_embedding_ctx_length=False, tiktoken_enabled=False)
store = Chroma(collection_name="chunks", persist_directory={str(kb.folder / "chroma")!r}, embedding_function=embeddings)
[(document, distance)] = store.similarity_search_with_score({QUERY!r}, k=1)
print(json.dumps([document.page_content, document.metadata["source"], distance]))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    text, source, distance = json.loads(run.stdout.splitlines()[-1])
    assert text.startswith("AWQ quantizes") and source.endswith("quant.md")
    assert abs((1 - distance) - dense.similarity) < 1e-4  # the server's query vector is the one `puyu kb search` makes


def test_bad_embedder_requests_are_refused_in_openai_shape(client, server):
    with pytest.raises(openai.NotFoundError, match="'gpt-4' does not exist; this server serves 'tiny', and the embedder "
                                                   "'all-MiniLM-L6-v2'"):
        client.embeddings.create(model="gpt-4", input="x")
    with pytest.raises(openai.BadRequestError, match="dimensions 8 is not available: all-MiniLM-L6-v2's embeddings have 384"):
        client.embeddings.create(model="all-MiniLM-L6-v2", input="x", dimensions=8)
    with pytest.raises(openai.BadRequestError, match="input 1 is empty"):
        client.embeddings.create(model="all-MiniLM-L6-v2", input=["x", "  "])
    with pytest.raises(openai.BadRequestError, match="takes text, not token ids"):
        client.embeddings.create(model="all-MiniLM-L6-v2", input=[[5, 6, 7]])
    with pytest.raises(openai.NotFoundError, match="does not exist"):  # the embedder does not chat
        client.chat.completions.create(model="all-MiniLM-L6-v2", messages=[{"role": "user", "content": "hi"}])
    response = httpx.post(f"{server.url}/embeddings", headers={"Authorization": f"Bearer {API_KEY}"},
                          json={"model": "all-MiniLM-L6-v2", "input": []})
    error = response.json()["error"]
    assert response.status_code == 400 and set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and "input is empty" in error["message"]


def test_a_folder_embedder_is_served_under_the_folder_name_and_a_clash_with_the_model_is_refused(tiny_server_model, embedder):
    from puyu.engine import EngineConfig, LLMEngine
    from puyu.errors import ConfigError
    from puyu.model import load_model
    from puyu.model.embedder import Embedder, default_embedder_path
    from puyu.serve.app import create_app

    folder = Embedder(default_embedder_path(), device="cpu")  # the same weights, given as a folder

    async def ask(app) -> tuple[list[str], list[list[float]]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://puyu") as http:
            ids = [card["id"] for card in (await http.get("/v1/models")).json()["data"]]
            vectors = [(await http.post("/v1/embeddings", json={"model": name, "input": TEXTS[0]})).json()["data"][0]["embedding"]
                       for name in ("model", folder.name)]  # the id, or the full path a knowledge base records
            return ids, vectors

    engine = LLMEngine(*load_model(tiny_server_model, dtype="float32", device="cpu"), EngineConfig())
    try:
        ids, vectors = asyncio.run(ask(create_app(engine, "tiny", embedder=folder)))
        with pytest.raises(ConfigError, match="both named 'all-MiniLM-L6-v2'.*--served-model-name"):
            create_app(engine, "all-MiniLM-L6-v2", embedder=embedder)
    finally:
        engine.shutdown()
    assert ids == ["tiny", "model"] and np.abs(np.array(vectors) - embedder.embed(TEXTS[:1])).max() < 1e-5

"""A real `puyu serve` subprocess on 127.0.0.1 with a tiny model, shared by the server tests."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from tests.conftest import make_hf_model

API_KEY = "sk-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, *flags: str, api_key: str | None = API_KEY, log: Path) -> SimpleNamespace:
    port = free_port()
    cmd = [sys.executable, "-m", "puyu", "serve", str(model_dir), "--port", str(port), "--dtype", "float32",
           "--served-model-name", "tiny", *flags]
    if api_key:
        cmd += ["--api-key", api_key]
    out = log.open("w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"puyu serve exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return SimpleNamespace(base=base, url=f"{base}/v1", proc=proc, log=log, model_dir=model_dir)
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"puyu serve did not come up:\n{log.read_text()}")


def metrics(server: SimpleNamespace) -> str:
    """The server's Prometheus text."""
    return httpx.get(f"{server.base}/metrics").text


def metric(server: SimpleNamespace, name: str) -> float:
    """One unlabelled metric's value."""
    return float(re.search(rf"^{name} (\S+)$", metrics(server), re.M).group(1))


def streams_together_and_alone(server: SimpleNamespace, api_key: str | None, count: int = 32, alone: int = 4):
    """``count`` greedy chat streams at once, then the first ``alone`` again one at a time: both lists of texts."""
    async def run():
        client = openai.AsyncOpenAI(base_url=server.url, api_key=api_key or "none", max_retries=0, timeout=300)
        prompts = [[{"role": "user", "content": f"Question number {i}: " + "tell me more " * (i % 5)}] for i in range(count)]

        async def one(messages):
            stream = await client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        together = await asyncio.gather(*(one(m) for m in prompts))
        return together, [await one(m) for m in prompts[:alone]]

    return asyncio.run(run())


def stop_server(server: SimpleNamespace) -> int:
    server.proc.terminate()
    try:
        return server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        return -9


@pytest.fixture(scope="session")
def tiny_server_model(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    folder = tmp_path_factory.mktemp("serve") / "tiny"
    make_hf_model(folder, tiny_tokenizer_dir, max_position_embeddings=1024)  # room for a rendered tool schema
    return folder


@pytest.fixture(scope="module")
def server(tiny_server_model, tmp_path_factory):
    s = start_server(tiny_server_model, "--max-queue", "128", log=tmp_path_factory.mktemp("log") / "server.log")
    yield s
    stop_server(s)


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)

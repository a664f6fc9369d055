"""Cross-backend agreement: the same tiny model through the local backend and through `puyu serve` + the API backend."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from puyu.eval.backends.local import LocalBackend
from puyu.eval.backends.openai_api import OpenAIBackend
from tests.conftest import ROOT
from tests.eval.test_backends_and_runs import REQUESTS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tiny_model_dir, tmp_path):
    """`puyu serve` on the tiny model in a subprocess; yields its base URL once GET /health answers."""
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "puyu", "serve", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port),
                             "--dtype", "float32"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"puyu serve exited with {proc.returncode}: {(tmp_path / 'serve.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("puyu serve did not answer GET /health within 180 s")
            time.sleep(0.5)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_local_and_served_loglikelihoods_agree(served, tiny_llm, tiny_model_dir):
    local = LocalBackend(tiny_llm, max_length=200)  # one window below the served context, so the server takes every prompt
    api = OpenAIBackend(tiny_model_dir.name, served, tokenizer=str(tiny_model_dir), max_length=200)
    ours, theirs = local.loglikelihood(REQUESTS), api.loglikelihood(REQUESTS)
    assert [greedy for _, greedy in ours] == [greedy for _, greedy in theirs]
    assert [score for score, _ in ours] == pytest.approx([score for score, _ in theirs], abs=1e-4)
    text = "The quick brown fox jumps over the lazy dog. " * 40  # several windows
    assert local.loglikelihood_rolling([text]) == pytest.approx(api.loglikelihood_rolling([text]), abs=1e-3)
    generated = api.generate_until([([{"role": "user", "content": "Hi"}], ["\n"], 8), ("Hello world!", ["\n"], 8)])
    assert len(generated) == 2 and all(isinstance(t, str) for t in generated)

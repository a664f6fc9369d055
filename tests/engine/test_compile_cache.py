"""The compile cache's trust rules: a folder is used only with its own key and unchanged files."""

from __future__ import annotations

import json
import os

import pytest

from puyu.engine.compile_cache import MANIFEST, CompileCache

KEY = {"model": {"hidden_size": 64}, "torch": "2.13.0", "cpu": ["AVX512"]}


def _build(cache: CompileCache) -> str:
    with cache.active() as verdict:
        (cache.folder / "fxgraph").mkdir(exist_ok=True)
        (cache.folder / "fxgraph" / "entry").write_bytes(b"compiled code")
    return verdict


@pytest.fixture(autouse=True)
def _no_user_cache_dir(monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)


def test_cold_then_hit_and_inductor_writes_into_the_folder(tmp_path):
    cache = CompileCache(KEY, tmp_path)
    with cache.active() as verdict:
        assert verdict == "cold" and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache.folder)
        (cache.folder / "fxgraph").mkdir()
        (cache.folder / "fxgraph" / "entry").write_bytes(b"compiled code")
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") != str(cache.folder)  # Inductor's own default again after the compile
    assert _build(CompileCache(KEY, tmp_path)) == "hit"
    manifest = json.loads((cache.folder / MANIFEST).read_text())
    assert manifest["key"] == KEY and "fxgraph/entry" in manifest["files"] and manifest["cached_s"] >= 0


@pytest.mark.parametrize("damage, verdict", [
    (lambda folder: (folder / "fxgraph" / "entry").write_bytes(b"garbage"), "corrupt"),
    (lambda folder: (folder / "fxgraph" / "entry").unlink(), "corrupt"),
    (lambda folder: (folder / MANIFEST).unlink(), "incomplete"),
    (lambda folder: (folder / MANIFEST).write_text("{not json"), "incomplete"),
    (lambda folder: (folder / MANIFEST).write_text(json.dumps({"key": {**KEY, "torch": "2.9.0"}, "files": {}})), "foreign"),
])
def test_a_damaged_or_foreign_folder_is_thrown_away_and_rebuilt(tmp_path, damage, verdict):
    cache = CompileCache(KEY, tmp_path)
    _build(cache)
    damage(cache.folder)
    (cache.folder / "stale").write_bytes(b"from the bad copy")
    assert _build(CompileCache(KEY, tmp_path)) == verdict
    assert not (cache.folder / "stale").exists()  # nothing of the bad copy was kept
    assert _build(CompileCache(KEY, tmp_path)) == "hit"


def test_a_compile_that_wrote_nothing_leaves_no_manifest(tmp_path):
    cache = CompileCache(KEY, tmp_path)
    with cache.active():
        pass  # this process had it compiled in memory already
    assert not (cache.folder / MANIFEST).exists()


def test_keys_that_differ_get_their_own_folders_and_expectations_come_from_this_machine(tmp_path):
    a, b = CompileCache(KEY, tmp_path), CompileCache({**KEY, "quant": ["w4a16", 32, "packed"]}, tmp_path)
    assert a.folder != b.folder
    _build(a)
    cold = json.loads((a.folder / MANIFEST).read_text())["cold_s"]
    assert b.expected_seconds(b.check()) == cold  # a new setting is expected to take as long as this machine's last cold compile


def test_a_later_start_with_another_cache_size_compiles_nothing(tmp_path, tiny_model_dir):
    """The cache is sized from free memory, so its size differs between starts: the compiled code must not depend on
    it (a static cache shape once made every start compile anew).  Two processes, so Dynamo's in-memory state is gone."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\nfrom puyu import LLM\nfrom puyu.engine import EngineConfig, LLMEngine\nfrom puyu.generation import SamplingParams\n"
        f"llm = LLM({str(tiny_model_dir)!r}, dtype='float32', device='cpu')\n"
        "engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(compile=True, num_blocks=int(sys.argv[1])))\n"
        "print(engine.generate([[5, 6, 7]], SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True))[0].token_ids)\n"
        "engine.shutdown()\n"
    )
    env = {**os.environ, "PUYU_HOME": str(tmp_path)}
    outputs = []
    for blocks in (40, 57):
        done = subprocess.run([sys.executable, "-c", script, str(blocks)], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout.strip().splitlines()[-1])
        if blocks == 40:
            written = {p for p in (tmp_path / "compile").rglob("*") if p.is_file() and "locks" not in p.parts}
    later = {p for p in (tmp_path / "compile").rglob("*") if p.is_file() and "locks" not in p.parts} - written
    assert outputs[0] == outputs[1]
    assert not [p for p in later if p.suffix in (".so", ".cpp") or "fxgraph" in p.parts], sorted(map(str, later))

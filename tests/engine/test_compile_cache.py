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



def test_the_key_changes_with_puyus_op_schemas(tiny_llm, monkeypatch):
    """Inductor's C++ wrapper calls puyu's ops with the arguments their schemas had when it compiled: a cache made
    before an op gained an argument must not be used (it failed in the dispatcher at the first step)."""
    from puyu.engine.compile_cache import compile_key
    from puyu.engine.config import EngineConfig
    from puyu.kernels import build

    before = compile_key(tiny_llm.model, EngineConfig(compile=True))
    grown = tuple(s.replace("Tensor lengths", "Tensor lengths, int x=0") if s.startswith("paged_decode_attention(") else s
                  for s in build.SCHEMAS)
    assert grown != build.SCHEMAS
    monkeypatch.setattr(build, "SCHEMAS", grown)
    after = compile_key(tiny_llm.model, EngineConfig(compile=True))
    assert before.pop("ops") != after.pop("ops") and before == after


def test_the_key_names_the_draft_model_only_when_there_is_one(tiny_llm):
    """A draft model's graphs are compiled into the same folder: another draft (or its quantization) is another folder,
    and a start without one keeps the folder it had before draft models existed."""
    from puyu.engine.compile_cache import compile_key
    from puyu.engine.config import EngineConfig

    config = EngineConfig(compile=True, draft_model="draft")
    plain = compile_key(tiny_llm.model, config)
    drafted = compile_key(tiny_llm.model, config, tiny_llm.model)
    quantized = compile_key(tiny_llm.model, EngineConfig(compile=True, draft_model="draft", draft_quant="w4a8"), tiny_llm.model)
    assert "draft" not in plain and drafted.pop("draft") != quantized.pop("draft") and plain == drafted == quantized

"""Readers of every format, the whole `puyu data clean` run with known duplicates, its report and determinism."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from puyu.cli import main
from puyu.corpus import CleanConfig, clean
from puyu.corpus.readers import CorpusReader, find_inputs
from puyu.corpus.report import jaccard
from puyu.errors import ConfigError, DatasetError
from tests.corpus.test_filters import c4, classic

HEURISTICS = ["gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality"]


def read(paths, **options) -> list:
    return list(CorpusReader(find_inputs([str(p) for p in paths]), **options).run())


def test_readers_of_every_format(tmp_path):
    mixed = tmp_path / "mixed"  # text in 'text' or 'content'; the tables below name theirs 'body'
    mixed.mkdir()
    (mixed / "wanjuan.jsonl").write_text(json.dumps({"id": "w1", "content": "正文一", "title": "t"}, ensure_ascii=False) + "\n")
    (mixed / "array.json").write_text(json.dumps([{"text": "alpha"}, {"text": ["line 1", "line 2"]}]))
    (mixed / "doc.txt").write_text("para one\nstill one\n\npara two\n")
    (tmp_path / "table.csv").write_text("body,label\ncsv text,1\n")
    (tmp_path / "table.tsv").write_text("body\tlabel\ntsv text\t2\n")
    with gzip.open(mixed / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "gzipped"}) + "\n")
    (mixed / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(json.dumps({"text": "zstd"}).encode() + b"\n"))
    pq.write_table(pa.table({"text": ["parquet 1", "parquet 2"], "n": [1, 2]}), mixed / "c.parquet")
    hf = mixed / "hf_dataset"  # the layout of datasets' save_to_disk, written without the datasets library
    hf.mkdir()
    with pa.OSFile(str(hf / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, pa.schema([("text", pa.string())])) as w:
        w.write_table(pa.table({"text": ["arrow row"]}))
    (hf / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (hf / "dataset_info.json").write_text("{}")
    (mixed / "README.md").write_text("folder walks skip Markdown")

    docs = read([mixed], txt_mode="paragraph")
    texts = sorted(d.text for d in docs)
    assert texts == sorted(["正文一", "alpha", "line 1\nline 2", "para one\nstill one", "para two", "gzipped", "zstd", "parquet 1",
                            "parquet 2", "arrow row"])
    wanjuan = next(d for d in docs if d.text == "正文一")
    assert wanjuan.id == "w1" and wanjuan.metadata == {"title": "t"}
    assert [d.text for d in read([mixed / "doc.txt"], txt_mode="line")] == ["para one", "still one", "para two"]
    assert [d.text for d in read([mixed / "doc.txt"], txt_mode="file")] == ["para one\nstill one\n\npara two\n"]
    tables = read([tmp_path / "table.csv", tmp_path / "table.tsv"], text_field="body")
    assert [(d.text, d.metadata["label"]) for d in tables] == [("csv text", "1"), ("tsv text", "2")]

    with pytest.raises(DatasetError, match="no field 'body'"):
        read([mixed / "array.json"], text_field="body")
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(ConfigError, match="unknown format"):
        find_inputs([str(tmp_path / "data.xml")])
    with pytest.raises(ConfigError, match="does not exist"):
        find_inputs([str(tmp_path / "missing")])


def corpus(tmp_path):
    """Real English and Chinese documents with known exact and near duplicates in two files (two tasks): the copies sit in the
    second file, so dedup must work across tasks.  Returns the folder and the documents."""
    words = c4(0).split()
    near = words.copy()
    for i in range(80, len(words), 80):  # change one word in 80: Jaccard of the 5-gram sets ~0.88
        near[i] = "zebra"
    far = words[: len(words) // 3] + c4(4).split()  # shares a third: Jaccard ~0.2
    docs = {
        "en": c4(0), "en_copy": "  " + c4(0).replace("\n", "\n\n") + " ", "en_near": " ".join(near), "en_far": " ".join(far),
        "en_other": c4(1), "zh": classic(525), "zh_copy": classic(525), "zh_near": classic(1064), "zh_other": classic(0),
        "french": "Le chat dort sur le canapé depuis ce matin, et il ne veut vraiment pas bouger de là.",
    }
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, ids in (("a", ["en", "en_far", "zh", "zh_other", "french"]), ("b", ["en_copy", "en_near", "en_other", "zh_copy", "zh_near"])):
        lines = [json.dumps({"id": i, "text": docs[i], "source": "test"}, ensure_ascii=False) + "\n" for i in ids]
        (folder / f"{name}.jsonl").write_text("".join(lines))
    return folder, docs


def test_clean_removes_known_duplicates_reports_them_and_is_deterministic(tmp_path, capsys):
    path, docs = corpus(tmp_path)
    assert jaccard(docs["en"], docs["en_near"]) > 0.85 and jaccard(docs["en"], docs["en_far"]) < 0.3
    assert 0.8 < jaccard(docs["zh"], docs["zh_near"]) < 0.81  # the same poem from two collections, two characters apart

    out = tmp_path / "run1"
    assert main(["data", "clean", str(path), "--out", str(out), "--skip", ",".join(HEURISTICS)]) == 0
    assert "10 documents in, 5 out" in capsys.readouterr().out
    kept = [json.loads(line) for f in sorted((out / "data").glob("*.jsonl")) for line in f.open()]
    by_id = {d["id"]: d for d in kept}
    en, zh = ({"en", "en_copy"} & set(by_id)).pop(), ({"zh", "zh_copy"} & set(by_id)).pop()  # one copy of each is kept
    assert set(by_id) == {en, zh, "en_far", "en_other", "zh_other"}
    removed = {step: {json.loads(line)["id"] for f in (out / "removed" / step).glob("*.gz") for line in gzip.open(f, "rt")}
               for step in ("language", "exact_dedup", "minhash_dedup")}
    assert removed == {"language": {"french"}, "exact_dedup": {"en", "en_copy", "zh", "zh_copy"} - {en, zh},
                       "minhash_dedup": {"en_near", "zh_near"}}
    assert by_id[en]["duplicate_count"] == 1 and by_id[en]["source"] == "test" and by_id[zh]["language"] == "zh"

    report = json.loads((out / "report.json").read_text())
    steps = {row["step"]: row for row in report["steps"]}
    assert (steps["language"]["in"], steps["language"]["removed"], steps["language"]["reasons"]) == (10, 1, {"other_language": 1})
    assert (steps["exact_dedup"]["removed"], steps["minhash_dedup"]["removed"]) == (2, 2)
    assert steps["language"]["examples"][0]["id"] == "french"
    clusters = {c["kept"]["id"]: c for c in report["minhash"]["clusters"]}
    assert {k: [d["id"] for d in c["removed"]] for k, c in clusters.items()} == {en: ["en_near"], zh: ["zh_near"]}
    assert report["minhash"]["similarity_threshold"] == 0.719
    assert "Near-duplicate clusters" in (out / "report.md").read_text()

    assert main(["data", "clusters", str(out)]) == 0
    assert "removed zh_near (Jaccard 0.804)" in capsys.readouterr().out

    with pytest.raises(ConfigError, match="--resume"):
        clean(CleanConfig(inputs=[str(path)], output=str(out)))
    again = tmp_path / "run2"  # the same run on two worker processes: the same bytes
    clean(CleanConfig(inputs=[str(path)], output=str(again), skip=HEURISTICS, workers=2))
    for shard in ("00000.jsonl", "00001.jsonl"):
        assert (again / "data" / shard).read_bytes() == (out / "data" / shard).read_bytes()


def test_bad_options_name_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="--dedup"):
        CleanConfig(inputs=["x"], output=str(tmp_path), dedup="fuzzy")
    with pytest.raises(ConfigError, match="--skip nope"):
        CleanConfig(inputs=["x"], output=str(tmp_path), skip=["nope"])
    with pytest.raises(ConfigError, match="--bad-words"):
        CleanConfig(inputs=["x"], output=str(tmp_path), bad_words=str(tmp_path / "none.txt"))


def test_dedup_modes_and_a_corpus_without_duplicates(tmp_path):
    path, _ = corpus(tmp_path)
    report = clean(CleanConfig(inputs=[str(path)], output=str(tmp_path / "exact"), skip=HEURISTICS, dedup="exact"))
    assert {row["step"]: row["removed"] for row in report["steps"]}["exact_dedup"] == 2 and report["documents_out"] == 7
    assert "minhash" not in report

    unique = clean(CleanConfig(inputs=[str(path / "a.jsonl")], output=str(tmp_path / "unique"), skip=HEURISTICS + ["language"]))
    assert unique["documents_out"] == 5 and unique["minhash"]["clusters"] == []
    kept = [json.loads(line) for line in (tmp_path / "unique" / "data" / "00000.jsonl").open()]
    assert {(d["minhash_cluster_id"], d["minhash_cluster_size"], d["duplicate_count"]) for d in kept} == {(-1, 1, 0)}


def test_a_relative_output_folder_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert CleanConfig(inputs=["in.jsonl"], output="runs/clean").output == str(tmp_path / "runs" / "clean")


def test_the_ray_executor_keeps_the_same_bytes_as_the_local_one(tmp_path):
    """A real local Ray cluster (2 CPUs, started in this process): every stage runs as Ray tasks, and the kept
    documents and the report's counts equal the local executor's.  Exact dedup only (three Ray stages instead of
    six: each pays seconds of task start-up); MinHash's stages ship to workers the same way."""
    ray = pytest.importorskip("ray")
    path, _ = corpus(tmp_path)
    options = {"skip": HEURISTICS, "dedup": "exact"}
    local = clean(CleanConfig(inputs=[str(path)], output=str(tmp_path / "local"), **options))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 << 20)
    try:
        remote = clean(CleanConfig(inputs=[str(path)], output=str(tmp_path / "ray"), executor="ray", **options))
        assert ray.is_initialized()  # the run used this cluster rather than looking for another
    finally:
        ray.shutdown()
    assert remote["documents_out"] == local["documents_out"] == 7  # less the French one and two exact copies
    for shard in ("00000.jsonl", "00001.jsonl"):
        assert (tmp_path / "ray" / "data" / shard).read_bytes() == (tmp_path / "local" / "data" / shard).read_bytes()
    assert [row["removed"] for row in remote["steps"]] == [row["removed"] for row in local["steps"]]

"""Knowledge-base benchmark: ingestion speed, query latency and retrieval quality.

Figures printed (Markdown tables):

- ingestion chunks/s of a real build of the NQ open-book passages (load, split,
  embed with all-MiniLM-L6-v2, write to Chroma, index BM25);
- query latency p50/p95 (ms) per retrieval mode on that store and on a
  synthetic store of ``--synthetic`` chunks (random words from the NQ passages
  with random unit vectors: it measures the store and the retrieval, since
  embedding 100k chunks on a CPU takes most of an hour; queries are embedded for real);
- recall@5 and MRR@10 on the NQ questions (gold passage id) for dense-only,
  BM25-only and hybrid retrieval.

Usage::

    python bench/rag.py                                   # full figures (lead's machine, nothing else running)
    python bench/rag.py --passages 60 --queries 20 --synthetic 2000   # a quick check that it works
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("PUYU_DATA_DIR", ROOT.parent / "shared" / "datasets"))
MODES = ("dense", "bm25", "hybrid")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_queries(kb, questions: list[str], mode: str, k: int = 10) -> tuple[list, list[float]]:
    """One search per question: the ranked hits and each search's time in milliseconds."""
    kb.search(questions[0], k, mode=mode)  # warm-up (loads the BM25 index, touches the HNSW graph)
    ranked, times = [], []
    for question in questions:
        start = time.perf_counter()
        ranked.append(kb.search(question, k, mode=mode))
        times.append((time.perf_counter() - start) * 1000)
    return ranked, times


def build_nq(args, work: Path):
    from puyu.rag import KnowledgeBase
    from puyu.rag.evaluate import load_qa

    folder = DATASETS / "rag" / "nq_openbook"
    lines = (folder / "passages.jsonl").read_text().splitlines()[: args.passages]
    (work / "nq").mkdir()
    (work / "nq" / "passages.jsonl").write_text("\n".join(lines) + "\n")
    ids = {json.loads(line)["id"] for line in lines}
    items = [item for item in load_qa(folder / "qa.jsonl") if item.gold_id in ids][: args.queries]
    kb = KnowledgeBase.create("nq")
    kb.embedder.embed(["warm-up"])
    report = kb.build([work / "nq"])
    return kb, items, report


def fill_synthetic(kb, count: int, seed: int = 0) -> float:
    """Write ``count`` synthetic chunks straight into the store; returns seconds spent writing + indexing."""
    from puyu.rag.splitter import Chunk
    from puyu.rag.store import chunk_metadata

    rng = random.Random(seed)
    vocabulary = sorted({w for h in kb.store.iter_all(["documents"]) for text in h["documents"] for w in text.split()})
    vectors = np.random.default_rng(seed).standard_normal((count, kb.embedder.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    start = time.perf_counter()
    step = 5000
    for first in range(0, count, step):
        source = f"/synthetic/part{first // step}.txt"
        kb.store.begin_file(source, "synthetic")
        rows = range(first, min(first + step, count))
        texts = [" ".join(rng.choices(vocabulary, k=60)) for _ in rows]
        kb.store.add([f"syn-{i}" for i in rows], vectors[first:first + len(texts)], texts,
                     [chunk_metadata(Chunk(t, source, tokens=60), "synthetic", i) for i, t in zip(rows, texts)])
        kb.store.finish_file(source, "synthetic", len(texts))
    kb.store.bm25()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=None, help="NQ passages to index (default: all 820)")
    parser.add_argument("--queries", type=int, default=None, help="NQ questions to ask (default: all with an indexed gold passage)")
    parser.add_argument("--synthetic", type=int, default=100_000, help="chunks in the synthetic store (0 skips it)")
    args = parser.parse_args()

    from puyu.rag.evaluate import retrieval_scores

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PUYU_HOME"] = tmp
        kb, items, report = build_nq(args, Path(tmp))
        questions = [item.question for item in items]
        print(f"## NQ open-book: {report.chunks_total} chunks from {args.passages or 820} passages, {len(items)} questions\n")
        print(f"ingestion: {report.chunks_written} chunks in {report.seconds:.1f} s = "
              f"**{report.chunks_written / report.seconds:.1f} chunks/s** (load, split, embed, Chroma, BM25)\n", flush=True)
        print("| retrieval | recall@5 | MRR@10 | p50 ms | p95 ms |\n|---|---|---|---|---|")
        for mode in MODES:
            ranked, times = run_queries(kb, questions, mode)
            scores = retrieval_scores(ranked, items, k=5, mrr_k=10)
            print(f"| {mode} | {scores['recall@5']:.3f} | {scores['mrr@10']:.3f} | {percentile(times, 50):.1f} | "
                  f"{percentile(times, 95):.1f} |", flush=True)
        if args.synthetic:
            seconds = fill_synthetic(kb, args.synthetic)
            print(f"\n## Synthetic store: {kb.store.count()} chunks (random vectors; written and BM25-indexed in {seconds:.1f} s)\n")
            print("| retrieval | p50 ms | p95 ms |\n|---|---|---|")
            for mode in MODES:
                times = run_queries(kb, questions, mode)[1]
                print(f"| {mode} | {percentile(times, 50):.1f} | {percentile(times, 95):.1f} |", flush=True)
        import torch

        print(f"\n(latency: one search per question, query embedding included; torch threads: {torch.get_num_threads()})")
        kb.close()


if __name__ == "__main__":
    main()

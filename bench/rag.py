"""Knowledge-base benchmark: ingestion speed, query latency, retrieval quality, answer quality, Chinese recall.

Figures printed (Markdown tables):

- ingestion chunks/s of a real build of the NQ open-book passages (load, split,
  embed with all-MiniLM-L6-v2, write to Chroma, index BM25) against a raw
  sentence-transformers ``encode`` of the same chunk texts in the same run (the
  ratio should be >= 0.8: the build adds little to the embedder);
- recall@5 and MRR@10 on the NQ questions (gold passage id) for dense-only,
  BM25-only and hybrid retrieval, with p50/p95 latency;
- query latency p50/p95 (ms) per mode on synthetic stores of each ``--sizes``
  chunk count (random words from the NQ passages with random unit vectors: it
  measures the store and the retrieval, since embedding 100k chunks on a CPU
  takes most of an hour; queries are embedded for real);
- with ``--answers N``: answer quality of the built-in model on N NQ questions
  and on the English LMDeploy FAQ questions for the generative, extractive and
  auto answer modes (containment of the gold answer, token F1, share with a
  valid citation, share degenerate, mean seconds per answer);
- recall@5 on the Chinese LMDeploy FAQ questions over the LMDeploy docs with the
  built-in embedder (BM25, dense, hybrid), and with ``--embedder FOLDER`` (a
  multilingual sentence-transformers model) too.

Usage::

    flock /tmp/puyu-heavy.lock python bench/rag.py                    # full figures
    python bench/rag.py --passages 60 --queries 20 --sizes 2000 --answers 0   # a quick check that it works
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
ANSWER_MODES = ("generative", "extractive", "auto")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_queries(kb, questions: list[str], mode: str, k: int = 10) -> tuple[list, list[float]]:
    """One search per question: the ranked hits and each search's time in milliseconds."""
    for question in questions[:10]:  # warm-up: loads the BM25 index; Chroma applies its write log to the HNSW graph
        kb.search(question, k, mode=mode)
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
    items = [item for item in load_qa(folder / "qa.jsonl") if item.gold_id in ids]
    kb = KnowledgeBase.create("nq")
    kb.embedder.embed(["warm-up"])
    report = kb.build([work / "nq"])
    return kb, items, report


def raw_encode_rate(kb) -> tuple[int, float]:
    """Chunks/s of a plain sentence-transformers encode of the store's chunk texts (the same texts the build embedded)."""
    from sentence_transformers import SentenceTransformer

    from puyu.model.embedder import default_embedder_path
    from puyu.rag.splitter import Chunk

    texts = [Chunk(text, meta["source"], json.loads(meta.get("headings", "[]"))).indexed_text()
             for page in kb.store.iter_all(["documents", "metadatas"]) for text, meta in zip(page["documents"], page["metadatas"])]
    model = SentenceTransformer(str(default_embedder_path()), device="cpu")
    model.encode(["warm-up"])
    start = time.perf_counter()
    model.encode(texts, batch_size=64, normalize_embeddings=True)
    return len(texts), len(texts) / (time.perf_counter() - start)


def fill_synthetic(kb, count: int, seed: int = 0) -> float:
    """Add synthetic chunks straight into the store until it holds ``count``; returns seconds spent writing + indexing."""
    from puyu.rag.splitter import Chunk
    from puyu.rag.store import chunk_metadata

    rng = random.Random(seed + kb.store.count())
    vocabulary = sorted({w for h in kb.store.iter_all(["documents"]) for text in h["documents"][:2000] for w in text.split()})
    first, step = kb.store.count(), 5000
    vectors = np.random.default_rng(seed + first).standard_normal((max(count - first, 0), kb.embedder.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    start = time.perf_counter()
    for offset in range(0, len(vectors), step):
        source = f"/synthetic/part{first + offset}.txt"
        kb.store.begin_file(source, "synthetic")
        rows = range(first + offset, min(first + offset + step, count))
        texts = [" ".join(rng.choices(vocabulary, k=60)) for _ in rows]
        kb.store.add([f"syn-{i}" for i in rows], vectors[offset:offset + len(texts)], texts,
                     [chunk_metadata(Chunk(t, source, tokens=60), "synthetic", i) for i, t in zip(rows, texts)])
        kb.store.finish_file(source, "synthetic", len(texts))
    kb.store.bm25()
    return time.perf_counter() - start


def answer_table(title: str, scores: dict) -> None:
    print(f"\n### Answers, {title}: {scores['answered']} questions, built-in model\n")
    print("| mode | contains gold | F1 | valid citation | degenerate | fallback | s/answer |\n|---|---|---|---|---|---|---|")
    for mode, s in scores["answers"].items():
        print(f"| {mode} | {s['contains']:.3f} | {s['f1']:.3f} | {s['cited']:.3f} | {s['degenerate']:.3f} | {s['fallback']:.3f} | "
              f"{s['seconds']:.1f} |", flush=True)


def lmdeploy_docs(args, client) -> None:
    """FAQ answers (English) with the built-in model and Chinese recall@5 per embedder."""
    from puyu.rag import KnowledgeBase
    from puyu.rag.evaluate import evaluate, load_qa

    folder = DATASETS / "rag" / "lmdeploy_docs"
    rows = [json.loads(line) for line in (folder / "faq_qa.jsonl").read_text().splitlines()]
    items = load_qa(folder / "faq_qa.jsonl")
    english = [item for item, row in zip(items, rows) if row["lang"] == "en"]
    chinese = [item for item, row in zip(items, rows) if row["lang"].startswith("zh")]
    embedders = [("all-MiniLM-L6-v2 (built-in)", None)] + ([(Path(args.embedder).name, args.embedder)] if args.embedder else [])
    for number, (label, embedder) in enumerate(embedders):
        kb = KnowledgeBase.create(f"lmdeploy{number}", embedder=embedder)
        report = kb.build([folder / "docs"])
        print(f"\n## LMDeploy docs with {label}: {report.chunks_total} chunks, built at "
              f"{report.chunks_written / report.seconds:.1f} chunks/s, token coverage {report.coverage:.2f}\n")
        print("| Chinese FAQ, retrieval | recall@5 | MRR@10 |\n|---|---|---|")
        for mode in MODES:
            scores = evaluate(kb, chinese, k=5, search={"mode": mode})
            print(f"| {mode} | {scores['recall@5']:.3f} | {scores['mrr@10']:.3f} |", flush=True)
        if number == 0 and client is not None:
            answer_table("English LMDeploy FAQ (gold: the FAQ answer)", evaluate(kb, english, k=5, generator=client, answers=ANSWER_MODES))
        kb.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=None, help="NQ passages to index (default: all 820)")
    parser.add_argument("--queries", type=int, default=None, help="NQ questions to ask (default: all with an indexed gold passage)")
    parser.add_argument("--sizes", default="10000,100000", help="synthetic store sizes for latency, comma-separated ('' skips)")
    parser.add_argument("--answers", type=int, default=40, help="NQ questions answered per answer mode by the built-in model (0 skips)")
    parser.add_argument("--embedder", default=None, help="a multilingual sentence-transformers folder for the Chinese recall")
    args = parser.parse_args()

    from puyu.rag.evaluate import evaluate, retrieval_scores

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PUYU_HOME"] = tmp
        kb, items, report = build_nq(args, Path(tmp))
        items = items[: args.queries]
        questions = [item.question for item in items]
        rate = report.chunks_written / report.seconds
        count, raw = raw_encode_rate(kb)
        print(f"## NQ open-book: {report.chunks_total} chunks from {args.passages or 820} passages, {len(items)} questions\n")
        print(f"ingestion: {report.chunks_written} chunks in {report.seconds:.1f} s = **{rate:.1f} chunks/s** (load, split, embed, "
              f"Chroma, BM25); raw sentence-transformers encode of the same {count} chunks: {raw:.1f} chunks/s; "
              f"**ratio {rate / raw:.2f}**\n", flush=True)
        print("| retrieval | recall@5 | MRR@10 | p50 ms | p95 ms |\n|---|---|---|---|---|")
        for mode in MODES:
            ranked, times = run_queries(kb, questions, mode)
            scores = retrieval_scores(ranked, items, k=5, mrr_k=10)
            print(f"| {mode} | {scores['recall@5']:.3f} | {scores['mrr@10']:.3f} | {percentile(times, 50):.1f} | "
                  f"{percentile(times, 95):.1f} |", flush=True)
        client = None
        if args.answers:
            from puyu import LLM
            from puyu.client import LocalClient

            client = LocalClient(LLM())
            answer_table("NQ open-book (gold: the short answer)", evaluate(kb, items[: args.answers], k=5, generator=client,
                                                                           answers=ANSWER_MODES))
        for size in [int(s) for s in args.sizes.split(",") if s]:
            seconds = fill_synthetic(kb, size)
            print(f"\n## Synthetic store: {kb.store.count()} chunks (random vectors; grown and BM25-indexed in {seconds:.1f} s)\n")
            print("| retrieval | p50 ms | p95 ms |\n|---|---|---|")
            for mode in MODES:
                times = run_queries(kb, questions, mode)[1]
                print(f"| {mode} | {percentile(times, 50):.1f} | {percentile(times, 95):.1f} |", flush=True)
        kb.close()
        lmdeploy_docs(args, client)
        import torch

        print(f"\n(latency: one search per question, query embedding included; torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()

"""The run report (``report.json`` + ``report.md``) and the inspection of removed duplicate clusters.

Contract: :func:`build` reads the stats datatrove wrote per stage
(``work/logs/<stage>/stats.json``) and the dropped documents under
``removed/<step>/`` and returns one dict: documents in and out, per step the
documents in, kept, removed and why (``reasons``) plus a few examples,
PII scrubbing counts, the MinHash parameters with a few duplicate clusters,
and seconds per stage.  :func:`clusters` lists near-duplicate clusters: the
document kept and the ones removed, each with its Jaccard similarity (word
5-gram shingles, as MinHash estimates it) to the kept one.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict
from pathlib import Path

from datatrove.utils.text import TextNormConfig, ngrams, simplify_text

from puyu.corpus.text import TOKENIZER

DEDUP_STEPS = {"💥 exact-deduplication stage 3": "exact_dedup", "🎯 MinHash stage 4": "minhash_dedup"}
EXAMPLES = 3
PREVIEW = 300


def _count(value) -> int:
    return int(value["total"] if isinstance(value, dict) else value)


def _documents(folder: Path):
    """Stream the JSON lines of every shard in ``folder`` (plain or gzipped), in shard order."""
    for path in sorted(folder.glob("*.jsonl*")) if folder.is_dir() else []:
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as f:
            for line in f:
                yield json.loads(line)


def _examples(folder: Path) -> list[dict]:
    """A few dropped documents, different reasons first."""
    picked, reasons = [], set()
    for doc in _documents(folder):
        reason = doc.get("filter_reason", "")
        if reason not in reasons or len(picked) < EXAMPLES:
            reasons.add(reason)
            picked.append({"id": doc["id"], "reason": reason, "text": doc["text"][:PREVIEW]})
        if len(reasons) >= EXAMPLES and len(picked) >= EXAMPLES:
            break
    return picked[:EXAMPLES]


def _step_rows(out: Path, stages: list[str]) -> tuple[list[dict], int]:
    rows, documents_in = [], 0
    for stage in stages:
        path = out / "work" / "logs" / stage / "stats.json"
        for entry in json.loads(path.read_text()) if path.is_file() else []:
            kind, _, name = entry["name"].partition(": ")
            stats = entry["stats"]
            if "READER" in kind and stage == "filter":
                documents_in = _count(stats.get("documents", 0))
            key = DEDUP_STEPS.get(name, name)
            if "FILTER" not in kind and key not in DEDUP_STEPS.values() and key != "pii":
                continue
            row = {"step": key, "in": _count(stats.get("total", 0)), "kept": _count(stats.get("forwarded", stats.get("total", 0))),
                   "removed": _count(stats.get("dropped", 0)),
                   "reasons": {k.removeprefix("dropped_"): _count(v) for k, v in stats.items() if k.startswith("dropped_")},
                   "counts": {k: _count(v) for k, v in stats.items() if k.startswith(("scrubbed_", "line-filter-"))}}
            row["examples"] = _examples(out / "removed" / key) if row["removed"] else []
            rows.append(row)
    return rows, documents_in


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """The word n-grams MinHash hashes: datatrove's normalisation (lowercase, punctuation and digits folded), then words."""
    return set(ngrams(TOKENIZER.word_tokenize(simplify_text(text, TextNormConfig())), n))


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Jaccard similarity of two texts' word n-gram sets."""
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def clusters(out: str | Path, limit: int | None = None, ngrams: int = 5) -> list[dict]:
    """Near-duplicate clusters of a run: ``{"cluster", "size", "kept", "removed": [{"id", "text", "jaccard"}]}``."""
    out = Path(out)
    removed: dict[int, list[dict]] = {}
    for doc in _documents(out / "removed" / "minhash_dedup"):
        cluster = doc.get("minhash_cluster_id", -1)
        if cluster in removed or limit is None or len(removed) < limit:
            removed.setdefault(cluster, []).append(doc)
    kept = {}
    for doc in _documents(out / "data"):
        if doc.get("minhash_cluster_id", -1) in removed:
            kept[doc["minhash_cluster_id"]] = doc
    result = []
    for cluster in sorted(removed):
        head = kept.get(cluster, {"id": None, "text": ""})
        result.append({"cluster": cluster, "size": len(removed[cluster]) + 1, "kept": {"id": head["id"], "text": head["text"]},
                       "removed": [{"id": d["id"], "text": d["text"], "jaccard": round(jaccard(head["text"], d["text"], ngrams), 3)}
                                   for d in removed[cluster]]})
    return result


def build(config, seconds: dict[str, float]) -> dict:
    """The report of the run of ``config`` (a :class:`~puyu.corpus.pipeline.CleanConfig`) in ``config.output``."""
    out = Path(config.output)
    rows, documents_in = _step_rows(out, list(seconds))
    documents_out = sum(1 for _ in _documents(out / "data"))
    total = sum(seconds.values())
    report = {
        "output": str(out / "data"), "documents_in": documents_in, "documents_out": documents_out, "steps": rows,
        "seconds": {k: round(v, 3) for k, v in seconds.items()}, "documents_per_second": round(documents_in / total, 1) if total else None,
        "config": asdict(config),
    }
    if config.dedup == "minhash":
        report["minhash"] = {"ngrams": config.ngrams, "buckets": config.buckets, "hashes_per_bucket": config.hashes_per_bucket,
                             "seed": config.seed, "similarity_threshold": round(config.similarity_threshold(), 3),
                             "clusters": [_preview(c) for c in clusters(out, limit=EXAMPLES, ngrams=config.ngrams)]}
    return report


def _preview(cluster: dict) -> dict:
    cut = dict(cluster, kept=dict(cluster["kept"], text=cluster["kept"]["text"][:PREVIEW]))
    cut["removed"] = [dict(d, text=d["text"][:PREVIEW]) for d in cluster["removed"]]
    return cut


def _one_line(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return (text[:width] + "…" if len(text) > width else text).replace("|", "\\|")


def markdown(report: dict) -> str:
    """The report as Markdown: a table of steps, examples of what each dropped, duplicate clusters, timings."""
    lines = [f"# Corpus cleaning report\n\n{report['documents_in']} documents in, {report['documents_out']} out "
             f"({report['output']}); {report['documents_per_second']} documents/s over {sum(report['seconds'].values()):.1f} s.\n",
             "| step | in | kept | removed | why (documents) | other counts |", "|---|---:|---:|---:|---|---|"]
    for row in report["steps"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(row["reasons"].items(), key=lambda kv: -kv[1]))
        counts = ", ".join(f"{k} {v}" for k, v in row["counts"].items())
        lines.append(f"| {row['step']} | {row['in']} | {row['kept']} | {row['removed']} | {reasons} | {counts} |")
    for row in report["steps"]:
        if row["examples"]:
            lines.append(f"\n## Dropped by {row['step']}\n")
            lines += [f"- `{ex['id']}` ({ex['reason'] or row['step']}): {_one_line(ex['text'])}" for ex in row["examples"]]
    if "minhash" in report:
        mh = report["minhash"]
        lines.append(f"\n## Near-duplicate clusters\n\nMinHash LSH over word {mh['ngrams']}-grams, {mh['buckets']} bands × "
                     f"{mh['hashes_per_bucket']} hashes, seed {mh['seed']}: pairs above Jaccard ≈{mh['similarity_threshold']} "
                     "are likely caught. `puyu data clusters OUT` lists them all.\n")
        for c in mh["clusters"]:
            lines.append(f"- cluster {c['cluster']} ({c['size']} documents), kept `{c['kept']['id']}`: {_one_line(c['kept']['text'], 100)}")
            lines += [f"  - removed `{d['id']}` (Jaccard {d['jaccard']}): {_one_line(d['text'], 100)}" for d in c["removed"]]
    lines.append("\n## Seconds per stage\n\n" + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()))
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out / "report.md").write_text(markdown(report))

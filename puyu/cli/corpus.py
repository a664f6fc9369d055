"""``puyu data``: clean and deduplicate a pre-training corpus, inspect its duplicate clusters (see :mod:`puyu.corpus`)."""

from __future__ import annotations

import argparse
import json
import sys


def _words(value: str) -> list[str]:
    return [w.strip() for w in value.split(",") if w.strip()]


def cmd_clean(args: argparse.Namespace) -> int:
    """Clean files into OUT/data: language ID, quality heuristics, PII scrubbing, exact and MinHash dedup; report in OUT."""
    from puyu.corpus import CleanConfig, clean

    config = CleanConfig(
        inputs=args.inputs, output=args.out, languages=[] if args.lang == "all" else _words(args.lang),
        language_threshold=args.language_threshold, text_field=args.text_field, txt_mode=args.txt_mode, min_chars=args.min_chars,
        max_chars=args.max_chars, skip=_words(args.skip), bad_words=args.bad_words, dedup=args.dedup, ngrams=args.ngrams,
        buckets=args.buckets, hashes_per_bucket=args.hashes_per_bucket, seed=args.seed, workers=args.workers,
        executor=args.executor, ray_address=args.ray_address, limit=args.limit, resume=args.resume, overwrite=args.overwrite,
    )

    def on_stage(name: str, seconds: float) -> None:
        print(f"  {name}: {seconds:.1f} s", file=sys.stderr)

    report = clean(config, on_stage=on_stage, show_progress=sys.stderr.isatty() and args.workers == 1,
                   quiet=not (args.verbose or args.debug))
    for row in report["steps"]:
        why = ", ".join(f"{k} {v}" for k, v in sorted(row["reasons"].items(), key=lambda kv: -kv[1])[:4])
        extra = ", ".join(f"{k} {v}" for k, v in row["counts"].items() if k.startswith("scrubbed_"))
        print(f"{row['step']:<18} {row['in']:>8} in {row['kept']:>8} kept {row['removed']:>7} removed  {why or extra}")
    print(f"{report['documents_in']} documents in, {report['documents_out']} out in {sum(report['seconds'].values()):.1f} s "
          f"({report['documents_per_second']} documents/s) -> {report['output']}; report: {args.out}/report.md")
    return 0


def cmd_clusters(args: argparse.Namespace) -> int:
    """List the near-duplicate clusters a run removed: the document kept and each removed one with its Jaccard similarity."""
    from pathlib import Path

    from puyu.corpus.report import clusters
    from puyu.errors import ConfigError

    if not (Path(args.run) / "report.json").is_file():
        raise ConfigError(f"{args.run} holds no finished `puyu data clean` run (no report.json)")
    ngrams = json.loads((Path(args.run) / "report.json").read_text())["config"]["ngrams"]
    found = clusters(args.run, limit=args.limit, ngrams=ngrams)
    if args.json:
        print(json.dumps(found, indent=2, ensure_ascii=False))
        return 0
    for c in found:
        print(f"cluster {c['cluster']} ({c['size']} documents)\n  kept    {c['kept']['id']}: {c['kept']['text'][:args.width]!r}")
        for d in c["removed"]:
            print(f"  removed {d['id']} (Jaccard {d['jaccard']}): {d['text'][:args.width]!r}")
    print(f"{len(found)} clusters")
    return 0


def register(sub, common) -> None:
    data = sub.add_parser("data", parents=[common], help="pre-training corpus: clean, deduplicate, inspect duplicates")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    clean = data_sub.add_parser("clean", parents=[common], help=cmd_clean.__doc__, description=cmd_clean.__doc__)
    clean.add_argument("inputs", nargs="+", metavar="IN",
                       help="files or folders: .jsonl/.json/.txt/.parquet/.csv/.tsv/.arrow (optionally .gz/.zst), `datasets` folders")
    clean.add_argument("--out", required=True, help="output folder: data/ (cleaned JSONL), removed/, report.md, report.json")
    clean.add_argument("--lang", default="en,zh", help="languages to keep, comma-separated ISO codes, or 'all' (default: en,zh)")
    clean.add_argument("--language-threshold", type=float, default=0.65, help="lowest language probability kept (default: 0.65)")
    clean.add_argument("--text-field", default=None, help="the JSON/CSV/Parquet field holding the text (default: text, else content)")
    clean.add_argument("--txt-mode", default="paragraph", choices=["line", "paragraph", "file"],
                       help="one document of a .txt file: a line, a blank-line separated paragraph or the file (default: paragraph)")
    clean.add_argument("--min-chars", type=int, default=50, help="fewest non-space characters of a document (default: 50)")
    clean.add_argument("--max-chars", type=int, default=1_000_000, help="most non-space characters (default: 1000000)")
    clean.add_argument("--skip", default="", help="steps to leave out, comma-separated: language, length, gopher_repetition, "
                       "gopher_quality, c4_quality, fineweb_quality, bad_words, pii")
    clean.add_argument("--bad-words", default=None, help="a file with one word or phrase per line; documents holding any are dropped")
    clean.add_argument("--dedup", default="minhash", choices=["minhash", "exact", "none"],
                       help="minhash: exact then near duplicates; exact: identical texts only (default: minhash)")
    clean.add_argument("--ngrams", type=int, default=5, help="MinHash shingle size in words (default: 5)")
    clean.add_argument("--buckets", type=int, default=14, help="MinHash LSH bands (default: 14)")
    clean.add_argument("--hashes-per-bucket", type=int, default=8, help="hashes per band (default: 8; threshold (1/b)^(1/r) ≈ 0.72)")
    clean.add_argument("--seed", type=int, default=1, help="seed of the MinHash hash functions (default: 1)")
    clean.add_argument("--workers", type=int, default=1, help="parallel tasks; work splits by input file (default: 1)")
    clean.add_argument("--executor", default="local", choices=["local", "ray"], help="local processes or a Ray cluster (default: local)")
    clean.add_argument("--ray-address", default="auto", help="Ray cluster to join (default: auto, the one `ray start --head` started)")
    clean.add_argument("--limit", type=int, default=-1, help="read at most this many documents per input file (default: all)")
    clean.add_argument("--resume", action="store_true", help="continue a stopped run in OUT, skipping finished tasks")
    clean.add_argument("--overwrite", action="store_true", help="delete what OUT holds and start again")
    clean.set_defaults(func=cmd_clean)

    inspect = data_sub.add_parser("clusters", parents=[common], help=cmd_clusters.__doc__, description=cmd_clusters.__doc__)
    inspect.add_argument("run", metavar="OUT", help="the --out folder of a `puyu data clean` run")
    inspect.add_argument("--limit", type=int, default=None, help="show at most this many clusters (default: all)")
    inspect.add_argument("--width", type=int, default=200, help="characters of each text shown (default: 200)")
    inspect.add_argument("--json", action="store_true", help="print the clusters as JSON (full texts)")
    inspect.set_defaults(func=cmd_clusters)

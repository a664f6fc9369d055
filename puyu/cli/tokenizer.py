"""``puyu tokenizer train`` (a byte-level BPE from a corpus) and ``puyu tokenizer shards`` (a corpus into token shards)."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

CORPUS_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".txt", ".txt.gz")


def corpus_files(path: str) -> list[Path]:
    """A corpus file, or the corpus files of a folder (sorted, recursively)."""
    from puyu.errors import DatasetError

    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(CORPUS_SUFFIXES))
        if not files:
            raise DatasetError(f"{p} holds no corpus files ({', '.join(CORPUS_SUFFIXES)})")
        return files
    if not p.is_file():
        raise DatasetError(f"no such corpus file or folder: {p}")
    return [p]


def documents(paths: list[str], field: str | None, txt: str):
    from puyu.data.documents import iter_documents

    for path in paths:
        for file in corpus_files(path):
            yield from iter_documents(file, field, txt)


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    """Train a byte-level BPE tokenizer (chat special tokens and template included) on corpus files; writes a folder
    that puyu and transformers' AutoTokenizer load."""
    from puyu.tokenizer.training import train_tokenizer

    texts = documents(args.files, args.field, args.txt)
    if args.max_docs:
        texts = itertools.islice(texts, args.max_docs)
    tokenizer = train_tokenizer(texts, args.vocab_size, template=args.template, min_frequency=args.min_frequency,
                                extra_special_tokens=args.special_token)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out)
    sample = "Hello world! 你好，世界！ 12345"
    print(f"tokenizer with {tokenizer.vocab_size} tokens ({args.template} template) in {out}; "
          f"{sample!r} -> {len(tokenizer.encode(sample))} tokens")
    return 0


def parse_source(spec: str) -> tuple[str, list[str]]:
    """``NAME=PATH[,PATH...]`` or a bare ``PATH`` (named by its file stem)."""
    if "=" in spec:
        name, paths = spec.split("=", 1)
        return name, paths.split(",")
    return Path(spec).name.split(".")[0], [spec]


def cmd_tokenizer_shards(args: argparse.Namespace) -> int:
    """Tokenize corpus files into memory-mapped token shards (one source per NAME=FILES), with a held-out val split."""
    from tqdm.auto import tqdm

    from puyu.data.shards import write_source
    from puyu.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_folder(args.tokenizer)
    for spec in args.sources:
        name, paths = parse_source(spec)
        with tqdm(desc=f"tokenize {name}", unit="doc", dynamic_ncols=True, disable=None) as bar:
            counted = {"tokens": 0}

            def progress(docs: int, tokens: int, bar=bar, counted=counted) -> None:
                counted["tokens"] += tokens
                bar.update(docs)
                bar.set_postfix(tokens=f"{counted['tokens']:,}", tok_s=f"{counted['tokens'] / max(bar.format_dict['elapsed'], 1e-9):,.0f}")

            entry = write_source(documents(paths, args.field, args.txt), tokenizer, args.out, name, args.val_fraction, args.seed,
                                 args.shard_tokens, progress=progress)
        print(f"{name}: {entry['train']['docs']:,} documents / {entry['train']['tokens']:,} tokens for training, "
              f"{entry['val']['docs']:,} / {entry['val']['tokens']:,} held out -> {Path(args.out) / name}")
    return 0


def register(sub, common) -> None:
    tok = sub.add_parser("tokenizer", help="train a tokenizer; tokenize a corpus into shards for puyu pretrain",
                         description="Train a tokenizer and tokenize corpora into shards for puyu pretrain.")
    inner = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="COMMAND")

    train = inner.add_parser("train", parents=[common], help=cmd_tokenizer_train.__doc__, description=cmd_tokenizer_train.__doc__)
    train.add_argument("files", nargs="+", help="corpus files or folders (.jsonl/.json with a text field, .txt; .gz too)")
    train.add_argument("--out", required=True, help="output folder (tokenizer.json + tokenizer_config.json)")
    train.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, special tokens and 256 bytes included (e.g. 8192)")
    train.add_argument("--template", default="chatml", choices=["chatml", "internlm2", "llama3"],
                       help="chat template and its special tokens (default: chatml)")
    train.add_argument("--min-frequency", type=int, default=2, help="least count of a merge (default: 2)")
    train.add_argument("--special-token", action="append", default=None, help="one more special token; repeat for more")
    train.add_argument("--max-docs", type=int, default=0, help="train on the first N documents only (0 = all)")
    _corpus_flags(train)
    train.set_defaults(func=cmd_tokenizer_train)

    shards = inner.add_parser("shards", parents=[common], help=cmd_tokenizer_shards.__doc__, description=cmd_tokenizer_shards.__doc__)
    shards.add_argument("sources", nargs="+", help="NAME=FILE[,FILE...] (a file or folder) per source; a bare FILE is named by its stem")
    shards.add_argument("--tokenizer", required=True, help="tokenizer folder (from puyu tokenizer train, or any model folder)")
    shards.add_argument("--out", required=True, help="shard folder (new, or one made with the same tokenizer: sources are added)")
    shards.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out for validation (default: 0.01)")
    shards.add_argument("--seed", type=int, default=0, help="keys the hash that picks validation documents (default: 0)")
    shards.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file (default: 100M)")
    _corpus_flags(shards)
    shards.set_defaults(func=cmd_tokenizer_shards)


def _corpus_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--field", default=None, help="JSON field with the text (default: text, else content)")
    parser.add_argument("--txt", default="line", choices=["line", "file"], help=".txt files: one document per line, or per file")

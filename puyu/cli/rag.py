"""``puyu kb``: build, list, inspect, remove, search, ask and evaluate knowledge bases (see :mod:`puyu.cli`)."""

from __future__ import annotations

import argparse
import json
import sys

from puyu.cli.common import add_model_args, load_llm


def _open(args: argparse.Namespace):
    from puyu.rag import KnowledgeBase

    return KnowledgeBase.open(args.name, device=args.embed_device)


def _search_options(args: argparse.Namespace) -> dict:
    return {"mode": args.mode, "paths": args.path, "mmr": args.mmr, "reranker": args.reranker}


def cmd_build(args: argparse.Namespace) -> int:
    """Build or update a knowledge base from files and folders (incremental: rerun after edits)."""
    from puyu.rag import KnowledgeBase

    kb = KnowledgeBase.create(args.kb, embedder=args.embedder, chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap,
                              device=args.embed_device)
    report = kb.build(args.docs, include=args.include or (), exclude=args.exclude or (), show_progress=sys.stderr.isatty())
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if report.chunks_written and report.coverage < 0.8:
        print(f"warning: the embedder ({kb.settings['embedder']}) knows only {report.coverage:.0%} of these documents' tokens "
              "(a language it was not trained on, e.g. Chinese with the default English model): dense search will be weak "
              "on them, BM25 still works; for Chinese build with --embedder FOLDER of a multilingual model (bge-m3, "
              "multilingual-e5, bge-small-zh)", file=sys.stderr)
    rate = report.chunks_written / report.seconds if report.seconds else 0.0
    print(f"kb {kb.name}: {len(report.added)} added, {len(report.changed)} changed, {len(report.removed)} removed, "
          f"{report.unchanged} unchanged, {len(report.skipped)} skipped; {report.chunks_written} chunks written in "
          f"{report.seconds:.1f} s ({rate:.0f} chunks/s); {report.chunks_total} chunks in total")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """List the knowledge bases."""
    from puyu.rag import KnowledgeBase, list_kbs

    for name in list_kbs():
        stats = KnowledgeBase.open(name).stats()
        print(f"{name}\t{stats['files']} files\t{stats['chunks']} chunks\t{stats['disk_mb']} MB")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Show a knowledge base's files, chunks and settings."""
    print(json.dumps(_open(args).stats(), indent=2, ensure_ascii=False))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """Delete a knowledge base."""
    from puyu.rag import remove_kb

    remove_kb(args.name)
    print(f"removed knowledge base {args.name}")
    return 0


def _print_hits(hits) -> None:
    for number, hit in enumerate(hits, 1):
        print(f"[{number}] {hit.location()}  (score {hit.score:.4f}, similarity {hit.similarity:.3f})\n{hit.text}\n")


def cmd_search(args: argparse.Namespace) -> int:
    """Show the chunks retrieved for a query."""
    hits = _open(args).search(args.query, args.k, **_search_options(args))
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
    else:
        _print_hits(hits)
    return 0


def default_answer_mode(args: argparse.Namespace) -> str:
    """``extractive`` for the built-in model (it rarely cites and quoting scored better, README), ``auto`` for others."""
    from puyu.model.registry import DEFAULT_MODEL

    return "extractive" if args.model == DEFAULT_MODEL and not args.adapter else "auto"


def cmd_ask(args: argparse.Namespace) -> int:
    """Answer a question from a knowledge base, citing its sources as [1], [2] ..."""
    from pathlib import Path

    from puyu.cli.flags import dataclass_from_args
    from puyu.client import LocalClient
    from puyu.generation import SamplingParams
    from puyu.rag.answer import DEFAULT_TEMPLATE

    params = dataclass_from_args(SamplingParams, args)
    kb = _open(args)
    args.answer = args.answer or default_answer_mode(args)
    client = None if args.answer == "extractive" else LocalClient(load_llm(args))
    template = Path(args.template).read_text() if args.template else DEFAULT_TEMPLATE
    stream = kb.ask_stream(args.question, client, params=params, k=args.k, min_similarity=args.min_similarity, template=template,
                           policy=args.citations, search=_search_options(args), answer=args.answer)
    if args.show_context:
        print("Retrieved context:\n")
        _print_hits(stream.sources)
    live = args.citations == "flag" and args.answer == "generative"  # otherwise the checked text is printed once complete
    for piece in stream:
        if live:
            sys.stdout.write(piece)
            sys.stdout.flush()
    answer = stream.answer
    sys.stdout.write(("" if live else answer.text) + "\n")
    if answer.looped:
        print("warning: the model started repeating itself and was stopped" +
              (f"; {answer.fallback}, so the answer quotes the sources instead" if answer.fallback else ""), file=sys.stderr)
    elif answer.fallback:
        print(f"note: {answer.fallback}, so the answer quotes the sources instead", file=sys.stderr)
    if answer.citations:
        print("\nSources:\n" + answer.references())
    if answer.invalid:
        print(f"warning: citation(s) {sorted(set(answer.invalid))} point at no retrieved source (there were "
              f"{len(answer.sources)}); they are not backed by the knowledge base", file=sys.stderr)
    if answer.uncited:
        print("warning: the answer cites no source; treat it as unsupported", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Score retrieval (recall@k, MRR) and, with --answers, answers per mode (exact match, F1, containment, citations) on a QA file."""
    from dataclasses import replace

    from puyu.client import LocalClient
    from puyu.rag.answer import ANSWER_PARAMS
    from puyu.rag.evaluate import evaluate, load_qa

    kb = _open(args)
    items = load_qa(args.qa)[: args.limit]
    modes = (args.answers or ["auto"]) if args.answers is not None else []
    client = LocalClient(load_llm(args)) if {"generative", "auto"} & set(modes) else None
    scores = evaluate(kb, items, k=args.k, mrr_k=args.mrr_k, generator=client, answers=modes, show_progress=sys.stderr.isatty(),
                      search=_search_options(args), params=replace(ANSWER_PARAMS, max_new_tokens=args.max_new_tokens))
    print(json.dumps(scores | {"kb": kb.name, "mode": args.mode}, indent=2))
    return 0


def _retrieval_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-k", type=int, default=5, help="chunks to retrieve (default: 5)")
    parser.add_argument("--mode", choices=["hybrid", "dense", "bm25"], default="hybrid", help="retrieval (default: hybrid)")
    parser.add_argument("--path", action="append", default=None, help="only sources matching this glob (repeatable)")
    parser.add_argument("--mmr", type=float, default=None, metavar="LAMBDA", help="diversify with MMR (1 = pure relevance)")
    parser.add_argument("--reranker", default=None, help="a local cross-encoder folder that re-orders the candidates")
    parser.add_argument("--embed-device", default="auto", help="where the embedder runs (default: auto)")


def register(sub, common) -> None:
    from puyu.cli.flags import add_dataclass_flags
    from puyu.generation.sampling import SamplingParams
    from puyu.rag.answer import ANSWER_PARAMS, MODES

    kb = sub.add_parser("kb", parents=[common], help="knowledge-base assistant (RAG): build, search, ask, evaluate")
    kb_sub = kb.add_subparsers(dest="kb_command", required=True, metavar="ACTION")

    build = kb_sub.add_parser("build", parents=[common], help=cmd_build.__doc__, description=cmd_build.__doc__)
    build.add_argument("docs", nargs="+", help="files and folders (Markdown, text, PDF, DOCX, HTML, JSONL with id/text)")
    build.add_argument("--kb", required=True, help="knowledge base name")
    build.add_argument("--include", action="append", help="only files matching this glob (repeatable)")
    build.add_argument("--exclude", action="append", help="skip files matching this glob (repeatable)")
    build.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk, embedder tokenizer (default: 200)")
    build.add_argument("--chunk-overlap", type=int, default=None, help="tokens shared by neighbouring chunks (default: 30)")
    build.add_argument("--embedder", default=None, help="a local sentence-transformers folder (default: all-MiniLM-L6-v2)")
    build.add_argument("--embed-device", default="auto", help="where the embedder runs (default: auto)")
    build.set_defaults(func=cmd_build)

    kb_sub.add_parser("ls", parents=[common], help=cmd_ls.__doc__).set_defaults(func=cmd_ls)
    for name, func in (("stats", cmd_stats), ("rm", cmd_rm)):
        parser = kb_sub.add_parser(name, parents=[common], help=func.__doc__)
        parser.add_argument("name", help="knowledge base name")
        parser.add_argument("--embed-device", default="auto", help=argparse.SUPPRESS)
        parser.set_defaults(func=func)

    search = kb_sub.add_parser("search", parents=[common], help=cmd_search.__doc__)
    search.add_argument("name", help="knowledge base name")
    search.add_argument("query")
    search.add_argument("--json", action="store_true", help="print the hits as JSON")
    _retrieval_flags(search)
    search.set_defaults(func=cmd_search)

    ask = kb_sub.add_parser("ask", parents=[common], help=cmd_ask.__doc__, description=cmd_ask.__doc__)
    ask.add_argument("name", help="knowledge base name")
    ask.add_argument("question")
    add_model_args(ask, quant=True)
    _retrieval_flags(ask)
    ask.add_argument("--show-context", action="store_true", help="print the retrieved chunks before the answer")
    ask.add_argument("--min-similarity", type=float, default=0.25, help="cosine below which a chunk is not relevant (default: 0.25)")
    ask.add_argument("--citations", choices=["flag", "drop"], default="flag",
                     help="citations of no retrieved source: flag them (streamed reply, then a warning) "
                          "or drop them (reply printed when complete)")
    ask.add_argument("--template", default=None, help="a prompt template file with {context} and {question}")
    ask.add_argument("--answer", choices=MODES, default=None,
                     help="generative: the model writes it (streamed); extractive: the best source sentences, quoted and cited "
                          "(no model); auto: generate, quote instead when the reply loops or cites nothing valid "
                          "(default: extractive with the built-in model, which rarely cites; auto with any other)")
    add_dataclass_flags(ask, SamplingParams, "sampling", defaults=ANSWER_PARAMS)
    ask.set_defaults(func=cmd_ask)

    ev = kb_sub.add_parser("eval", parents=[common], help=cmd_eval.__doc__, description=cmd_eval.__doc__)
    ev.add_argument("name", help="knowledge base name")
    ev.add_argument("--qa", required=True, help="JSONL: question + gold_passage_id, source/section or answer/aliases")
    ev.add_argument("--mrr-k", type=int, default=10, help="MRR cut-off (default: 10)")
    ev.add_argument("--limit", type=int, default=None, help="only the first N questions")
    ev.add_argument("--answers", nargs="*", choices=MODES, default=None, metavar="MODE",
                    help="also answer, in each MODE (generative, extractive, auto; none given: auto), and score the answers")
    ev.add_argument("--max-new-tokens", type=int, default=ANSWER_PARAMS.max_new_tokens,
                    help=f"generated answer length with --answers (default: {ANSWER_PARAMS.max_new_tokens})")
    add_model_args(ev, quant=True)
    _retrieval_flags(ev)
    ev.set_defaults(func=cmd_eval)

"""``puyu serve``: registered with the CLI (see :mod:`puyu.cli`).

:func:`run_engine_server` is shared with ``puyu web``: it loads the model into
an engine, builds the OpenAI-compatible app (plus the browser UI with
``web=True``) and runs it: the engine computes in the main thread, whose
PyTorch workers stay warm, and uvicorn serves HTTP in a thread beside it.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from puyu.cli.common import add_model_args, status


def run_engine_server(args: argparse.Namespace, web: bool = False) -> int:
    """Serve ``args.model`` over the OpenAI API (and the web UI when ``web``) until Ctrl-C/SIGTERM."""
    import uvicorn

    from puyu.cli.flags import dataclass_from_args
    from puyu.engine import EngineConfig, LLMEngine
    from puyu.model import load_model, pick_quant
    from puyu.model.embedder import load_embedder
    from puyu.serve.app import create_app

    args.quant = pick_quant(args.model, args.quant, args.device, args.dtype)
    config = dataclass_from_args(EngineConfig, args)
    embedder = None
    if getattr(args, "embedder", None):
        with status(f"loading the embedder {args.embedder}"):
            embedder = load_embedder(args.embedder, args.embed_device)
    with status(f"loading {args.model}"):
        model, tokenizer = load_model(args.model, args.dtype, args.device, chat_template=args.chat_template, adapter=args.adapter,
                                      quantized=config.quant != "none")
        engine = LLMEngine(model, tokenizer, config)
    name = args.served_model_name or Path(str(args.model).rstrip("/")).name.removesuffix(".gguf")
    app = create_app(engine, name, api_key=args.api_key, cors_origins=args.cors_origins, drain_timeout=args.drain_timeout,
                     embedder=embedder, image_dir=getattr(args, "image_dir", None))
    if web:
        from puyu.web.app import UIConfig, local_url, mount_ui

        mount_ui(app, UIConfig(api_base=f"{local_url(args.host, args.port)}/v1", api_key=args.api_key, model=name,
                               tokenizer=tokenizer, context_length=engine.max_model_len, key=args.api_key,
                               files=getattr(args, "files", None), allow=tuple(getattr(args, "allow", ())),
                               images=model.image_input is not None))
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=int(args.drain_timeout) or None))

    def serve_http() -> None:
        try:
            server.run()
        finally:
            engine.shutdown()  # also when the server could not start (a port in use): the loop below ends

    http = threading.Thread(target=serve_http, name="puyu-http", daemon=True)

    def stop(signum, frame) -> None:
        server.should_exit = True  # uvicorn drains, then the app's lifespan shuts the engine down

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"serving {name!r} on http://{args.host}:{args.port}/v1 (Ctrl-C stops)", flush=True)
    if app.state.server.recommended_sampling:
        chosen = " ".join(f"{k}={v:g}" for k, v in app.state.server.recommended_sampling.items())
        print(f"requests that set no sampling use the model's recommended {chosen}", flush=True)
    if embedder:
        print(f"embeddings of {app.state.server.embedder_id!r} ({embedder.dimension}-d) on /v1/embeddings", flush=True)
    if web:
        print(f"web UI on http://{args.host}:{args.port}/", flush=True)
    # The engine computes in this (main) thread, whose PyTorch workers stay warm; HTTP runs beside it.
    engine.run(ready=http.start)
    http.join(timeout=30)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model over an OpenAI-compatible HTTP API (continuous batching, paged KV cache)."""
    return run_engine_server(args, web=args.web)


def add_server_args(parser: argparse.ArgumentParser, port: int,
                    api_key_help: str = "require 'Authorization: Bearer KEY' on /v1 routes (and /ui with --web)") -> None:
    """The model, listening, API and engine flags shared by ``puyu serve`` and ``puyu web``."""
    from puyu.cli.flags import add_dataclass_flags
    from puyu.engine.config import EngineConfig

    add_model_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=port, help=f"port (default: {port})")
    parser.add_argument("--api-key", default=None, help=api_key_help)
    parser.add_argument("--cors-origins", nargs="*", default=None, help="allow browser requests from these origins ('*' for any)")
    parser.add_argument("--served-model-name", default=None, help="the model id clients use (default: the model's name)")
    parser.add_argument("--drain-timeout", type=float, default=5.0, help="seconds to let running requests finish on shutdown")
    add_dataclass_flags(parser, EngineConfig, "engine", overrides={"quant": "auto"})


def register(sub, common) -> None:
    serve = sub.add_parser("serve", parents=[common], help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    add_server_args(serve, 23333)
    serve.add_argument("--web", action="store_true", help="also serve the browser UI (chat, agent, knowledge base) at /")
    serve.add_argument("--embedder", default=None, metavar="NAME|FOLDER",
                       help="also serve this sentence-transformers embedder on /v1/embeddings, under its own model id: "
                            "all-MiniLM-L6-v2 (the knowledge base's default) or a local folder (id: the folder's name), "
                            "giving the vectors `puyu kb` stores; requests naming the served model keep its mean-pooled "
                            "hidden states (default: none)")
    serve.add_argument("--embed-device", default="auto", help="where the embedder runs (default: auto)")
    serve.add_argument("--image-dir", default=None, metavar="FOLDER", help="vision-language models: image_url parts may name "
                       "local files under FOLDER (default: data: URLs only; remote URLs are never fetched)")
    serve.set_defaults(func=cmd_serve)

"""``puyu serve``: registered with the CLI (see :mod:`puyu.cli`)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from puyu.cli import add_model_args, status


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model over an OpenAI-compatible HTTP API (continuous batching, paged KV cache)."""
    import uvicorn

    from puyu.cli_args import dataclass_from_args
    from puyu.engine import EngineConfig, LLMEngine
    from puyu.model import load_model
    from puyu.serve.app import create_app

    config = dataclass_from_args(EngineConfig, args)
    with status(f"loading {args.model}"):
        model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
        if args.chat_template:
            template = Path(args.chat_template)
            tokenizer.set_chat_template(template.read_text() if template.is_file() else args.chat_template)
        engine = LLMEngine(model, tokenizer, config)
    name = args.served_model_name or Path(str(args.model).rstrip("/")).name.removesuffix(".gguf")
    app = create_app(engine, name, api_key=args.api_key, cors_origins=args.cors_origins, drain_timeout=args.drain_timeout)
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
    # The engine computes in this (main) thread, whose PyTorch workers stay warm; HTTP runs beside it.
    engine.run(ready=http.start)
    http.join(timeout=30)
    return 0


def register(sub, common) -> None:
    from puyu.cli_args import add_dataclass_flags
    from puyu.engine.config import EngineConfig

    serve = sub.add_parser("serve", parents=[common], help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    add_model_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=23333, help="port (default: 23333)")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    serve.add_argument("--cors-origins", nargs="*", default=None, help="allow browser requests from these origins ('*' for any)")
    serve.add_argument("--served-model-name", default=None, help="the model id clients use (default: the model's name)")
    serve.add_argument("--drain-timeout", type=float, default=5.0, help="seconds to let running requests finish on shutdown")
    add_dataclass_flags(serve, EngineConfig, "engine")
    serve.set_defaults(func=cmd_serve)

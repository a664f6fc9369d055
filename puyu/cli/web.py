"""``puyu web``: the browser UI (chat, agent, knowledge base), registered with the CLI (see :mod:`puyu.cli`).

``puyu web [MODEL]`` loads the model into the serving engine and serves the
OpenAI API and the UI from one process (the same as ``puyu serve --web``);
``puyu web --api-base URL`` loads no model and puts the UI in front of any
OpenAI-compatible server (:mod:`puyu.web.proxy`).
"""

from __future__ import annotations

import argparse

DEFAULT_PORT = 7860


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the browser UI: chat, agent and knowledge base, on the local model or a remote OpenAI-compatible API."""
    if not args.api_base:
        from puyu.cli.serve import run_engine_server

        return run_engine_server(args, web=True)
    import uvicorn

    from puyu.web.proxy import create_proxy_app

    app = create_proxy_app(args.api_base, args.api_key, args.api_model, args.files, allow=tuple(args.allow))
    print(f"web UI on http://{args.host}:{args.port}/ for the model server at {args.api_base} (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def register(sub, common) -> None:
    from puyu.cli.agent import names
    from puyu.cli.serve import add_server_args

    web = sub.add_parser("web", parents=[common], help=cmd_web.__doc__, description=cmd_web.__doc__)
    add_server_args(web, DEFAULT_PORT, api_key_help="with --api-base: the remote server's key; otherwise the key this "
                                                    "server requires on /v1 and /ui routes (the page asks for it)")
    web.add_argument("--api-base", default=None, help="use this OpenAI-compatible server instead of loading a model, "
                                                      "e.g. http://127.0.0.1:23333/v1")
    web.add_argument("--api-model", default=None, help="the model name at --api-base (default: the first it lists)")
    web.add_argument("--files", default=None, help="a folder the agent's read_file and zoo tools (image_info; ocr, speak, "
                     "image_edit with --allow) work in (default: those tools are off)")
    web.add_argument("--allow", type=names, default=[], help="comma-separated effects the agent tab's tools may have: "
                     "writes_files (speak, image_edit), heavy (ocr) (default: none)")
    web.set_defaults(func=cmd_web)

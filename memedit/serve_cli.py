"""``memedit serve`` (the OpenAI-compatible server) and ``memedit keys create|list|revoke``."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

UPSTREAM_KEY_ENV = "MEMEDIT_UPSTREAM_KEY"


def add_serve_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser(
        "serve", parents=[common], help="serve an OpenAI-compatible API (chat completions, edits) with per-namespace keys",
        description="Serve /v1/chat/completions, /v1/models and /v1/edits over the database. Each request's bearer key "
                    "picks its namespace (make keys with `memedit keys create`). Needs `pip install \"memedit[serve]\"`.")
    serve.add_argument("--model", default="smollm2-135m", help="local model: packaged name or path (default: smollm2-135m)")
    serve.add_argument("--upstream", metavar="URL", help="answer through an OpenAI-compatible endpoint instead "
                                                          f"(e.g. http://127.0.0.1:8001/v1); its key from ${UPSTREAM_KEY_ENV}")
    serve.add_argument("--upstream-model", help="the upstream's model id (default: --model)")
    serve.add_argument("--router", default="serac", help="default router (a request may name another): ike, serac, "
                                                          "mello, pokemqa, graph, or grace for a local model (default: serac)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="default: 8000")
    serve.add_argument("--max-tokens", type=int, default=96, help="answer budget when a request gives none (default: 96)")
    serve.add_argument("--no-warm", action="store_true",
                       help="decide each question only on its turn on the model (by default a question that must wait "
                            "for the model is decided ahead, on another core, while it waits)")

    keys = commands.add_parser("keys", parents=[common], help="bearer keys of `memedit serve`: create, list, revoke",
                               description="Keys are bound to one namespace (--namespace) and stored hashed in the database.")
    actions = keys.add_subparsers(dest="keys_action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[common], help="make a key for --namespace (shown once)")
    create.add_argument("--name", help="a label for the key (who or what uses it)")
    actions.add_parser("list", parents=[common], help="list keys (ids and namespaces, never the keys)")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key by its id")
    revoke.add_argument("id", help="the key's id (from `memedit keys list`) or the key itself")


def cmd_keys(args: argparse.Namespace) -> int:
    from .keys import KeyRing

    ring = KeyRing(args.db)
    try:
        if args.keys_action == "create":
            token, entry = ring.create(args.namespace, name=args.name)
            if args.json:
                print(json.dumps({"key": token, **entry.to_dict()}))
            else:
                print(f"key for namespace {entry.namespace!r} (id {entry.id}); it is shown only now:\n{token}")
        elif args.keys_action == "list":
            entries = ring.list()
            if args.json:
                print(json.dumps([e.to_dict() for e in entries]))
            for e in entries if not args.json else ():
                state = f"revoked {e.revoked_at[:19]}" if e.revoked_at else "live"
                print(f"{e.id}  {e.prefix}…  {e.namespace}  {state}  {e.name or ''}".rstrip())
            if not entries and not args.json:
                print("(no keys)")
        else:
            entry = ring.revoke(args.id)
            print(json.dumps(entry.to_dict()) if args.json else f"revoked key {entry.id} of namespace {entry.namespace!r}")
    finally:
        ring.close()
    return 0


def upstream_backend(url: str, model: str, api_key: str | None, max_tokens: int):
    """An OpenAI-compatible endpoint as a memedit model (black box, through LangChain)."""
    from langchain_openai import ChatOpenAI

    from memedit.adapters.langchain import LangChainBackend

    chat = ChatOpenAI(base_url=url, model=model, api_key=api_key or "none", max_tokens=max_tokens, temperature=0, max_retries=1)
    return LangChainBackend(chat, name=model)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from memedit.adapters.server import create_app
    except ImportError as err:
        raise ValueError(f"memedit serve needs its extra: pip install \"memedit[serve]\" ({err})") from None
    from .memory import Memory
    from .models import load_model

    if args.upstream:
        model = upstream_backend(args.upstream, args.upstream_model or args.model, os.environ.get(UPSTREAM_KEY_ENV), args.max_tokens)
    else:
        model = load_model(args.model)
    with Memory(args.db) as memory:
        memory.embedder  # loaded now, not by the first request
        app = create_app(memory, model, router=args.router, model_name=args.model, max_tokens=args.max_tokens,
                         warm=not args.no_warm)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0

"""
Stage `serve`: serve a trained model over HTTP with an OpenAI-compatible API (mini_nanochat/server.py).

    python -m mini_nanochat serve                                  # the speedrun's most trained model, 127.0.0.1:8000
    python -m mini_nanochat serve --model-tag d12 --port 8080 --workers 2
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "mini-nanochat", "messages": [{"role": "user", "content": "What is 12*7?"}]}'

Routes: POST /v1/chat/completions (chat models), POST /v1/completions (any model, plain text continuation),
GET /v1/models, GET /health, GET /stats. Any OpenAI client works with base_url="http://127.0.0.1:8000/v1"
and any api_key; the request's `model` name is not checked (the reply names the served model).

Workers: one per GPU with CUDA (each holds its own copy of the model); on a CPU --workers (default 1)
engines share one model. A request waits in a queue of --queue-size; beyond it the server answers 503
with Retry-After. Listening on anything but 127.0.0.1 exposes the model to your network: there is no
authentication.
"""
from __future__ import annotations

import argparse

from ..common import UserError, autodetect_device, is_plain_name, print_config


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from ..checkpoint import add_run_flags

    add_run_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface, no auth!)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="", help="cuda / mps / cpu (default: autodetect)")
    p.add_argument("--workers", type=int, default=0,
                   help="model workers (default: one per GPU with CUDA, 1 otherwise)")
    p.add_argument("--queue-size", type=int, default=16, help="requests that may wait for a worker (then 503)")
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="the largest max_tokens a request may ask")
    return p


def check_flags(args: argparse.Namespace) -> None:
    if not args.run_dir and not is_plain_name(args.model_tag):
        raise UserError(f"--model-tag {args.model_tag!r:.60} is not a plain name (letters, digits, '.', '_', '-'; "
                        f"no '/' or '..'); use --run-dir for a path")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in [0, 65535], got {args.port}")
    if args.workers < 0 or args.workers > 64:
        raise UserError(f"--workers must be in [0, 64] (0 = automatic), got {args.workers}")
    if not 1 <= args.queue_size <= 100_000:
        raise UserError(f"--queue-size must be in [1, 100000], got {args.queue_size}")
    if args.max_tokens_limit < 1:
        raise UserError(f"--max-tokens-limit must be >= 1, got {args.max_tokens_limit}")


def build_app(args: argparse.Namespace):
    """Load the model (once per worker device) and build the app; returns (app, model_id, config dict)."""
    import torch

    from ..checkpoint import CheckpointError, latest_checkpoint, load_model, run_from_flags
    from ..engine import Engine
    from ..server import ServerConfig, create_app

    check_flags(args)
    device = autodetect_device(args.device or None)
    run_dir = run_from_flags(args)
    if latest_checkpoint(run_dir) is None:
        raise UserError(f"no checkpoint in {run_dir}; train one first: python -m mini_nanochat speedrun")
    if device.startswith("cuda"):
        count = torch.cuda.device_count()
        workers = args.workers or count
        devices = [f"cuda:{i % count}" for i in range(workers)]
    else:
        workers = args.workers or 1
        devices = [device]
    engines, models = [], {}
    try:
        for d in devices:
            if d not in models:
                models[d] = load_model(run_dir, d)
    except CheckpointError as e:
        raise UserError(str(e).splitlines()[0] if str(e) else "unreadable checkpoint") from None
    for i in range(workers):
        model, tok, meta = models[devices[i % len(devices)]]
        engines.append(Engine(model, tok))
    model, tok, meta = next(iter(models.values()))
    model_id = run_dir.name
    chat = bool(meta.get("sft"))
    cfg = ServerConfig(queue_size=args.queue_size, max_tokens_limit=args.max_tokens_limit)
    app = create_app(engines, tok, model_id=model_id, chat=chat, config=cfg)
    shown = {"checkpoint": meta["checkpoint"], "model": model_id, "chat model": chat, "device": device,
             "workers": workers, "queue_size": args.queue_size, "context": model.config.sequence_len,
             "listen": f"http://{args.host}:{args.port}"}
    return app, model_id, shown


def check_port(host: str, port: int) -> None:
    """Refuse early, as one line, an address that cannot be listened on (uvicorn would exit 1 after
    loading the model)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); is another server running? "
                        f"try --port") from None


def run(args: argparse.Namespace) -> None:
    try:
        import uvicorn
    except ImportError:
        raise UserError("serve needs fastapi and uvicorn: pip install -e . (or bash install.sh)") from None
    check_port(args.host, args.port)
    app, _, shown = build_app(args)
    print_config("serve", shown)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"serve: listening on {args.host}: anyone who can reach it can use the model (no authentication)")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None


def main(argv: list[str] | None = None):
    return run(get_parser().parse_args(argv))

"""
Benchmark (issue #15): a load test of the HTTP server on loopback. Starts the real app (the `serve` stage's
build_app: the model of --model-tag under $MINI_NANOCHAT_HOME, --workers engines) under uvicorn in a
thread on a free 127.0.0.1 port, then runs --clients concurrent streaming clients (httpx.AsyncClient),
each sending one chat message (a mix of arithmetic questions and small talk) with max_tokens, temperature
0.8 and its own seed. The whole run is bounded by --timeout; every stream must end with `data: [DONE]`.

Prints a markdown table: clients, completed streams, p50 / p99 time to first token, p50 / p99 total
latency, completion tokens (from the streamed usage chunk), aggregate tok/s (completion tokens / wall
time) and wall time, plus the machine (CPU model, cores) and the date.

    MINI_NANOCHAT_HOME=/tmp/sr-home python benchmarks/bench_serve.py --model-tag speedrun
    MINI_NANOCHAT_HOME=/tmp/sr-home python benchmarks/bench_serve.py --model-tag speedrun --workers 2

The queue size defaults to --clients so that no request is refused with 503 (a refusal counts as a stream
that did not complete). Exit status 1 if any stream did not complete.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import time

import httpx

from mini_nanochat.stages import serve

PROMPTS = [
    "What is 12*7?", "Hello! How are you today?", "What is 45+38?", "Tell me something nice about cats.",
    "What is 100-37?", "What is your favourite colour?", "What is 9*9?", "Can you recommend a good book?",
    "What is 256/4?", "Good morning! Any plans for the weekend?", "What is 17+25?", "Why is the sky blue?",
    "What is 13*13?", "Tell me a short joke.", "What is 81-19?", "What do you like to do for fun?",
]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pct(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


from mini_nanochat.server import BackgroundServer as LiveServer  # noqa: E402


async def one_client(client: httpx.AsyncClient, url: str, i: int, max_tokens: int, temperature: float) -> dict:
    body = {"model": "mini-nanochat", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": temperature, "seed": 1000 + i, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    res = {"done": False, "ttft": None, "chunks": 0, "usage": None, "latency": None, "status": None, "error": None}
    try:
        async with client.stream("POST", url, json=body) as r:
            res["status"] = r.status_code
            if r.status_code != 200:
                res["error"] = f"HTTP {r.status_code}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    res["done"] = True
                    break
                c = json.loads(line[6:])
                if c.get("usage"):
                    res["usage"] = c["usage"]["completion_tokens"]
                if c.get("choices") and c["choices"][0]["delta"].get("content"):
                    if res["ttft"] is None:
                        res["ttft"] = time.perf_counter() - t0
                    res["chunks"] += 1
    except (httpx.HTTPError, ValueError) as e:
        res["error"] = f"{type(e).__name__}: {e}"[:200]
    finally:
        res["latency"] = time.perf_counter() - t0
    return res


async def run_clients(url: str, n: int, max_tokens: int, temperature: float, timeout: float) -> list:
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        tasks = [asyncio.create_task(one_client(client, url, i, max_tokens, temperature)) for i in range(n)]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return [t.result() if t in done else {"done": False, "ttft": None, "chunks": 0, "usage": None,
                                              "latency": None, "status": None, "error": "timed out"}
                for t in tasks]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-tag", default="speedrun")
    p.add_argument("--stage", default="latest", choices=["latest", "base", "sft", "rl"])
    p.add_argument("--workers", type=int, default=0, help="model workers (0: the serve stage's default)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--timeout", type=float, default=120.0, help="bound on the whole load test, seconds")
    p.add_argument("--queue-size", type=int, default=0, help="server queue (default: --clients)")
    p.add_argument("--device", default="")
    a = p.parse_args(argv)

    sargs = serve.get_parser().parse_args(["--model-tag", a.model_tag, "--stage", a.stage, "--workers",
                                           str(a.workers), "--queue-size", str(a.queue_size or a.clients),
                                           "--port", "0"] + (["--device", a.device] if a.device else []))
    app, model_id, shown = serve.build_app(sargs)
    print(f"model {model_id} ({shown['checkpoint']}), device {shown['device']}, workers {shown['workers']}, "
          f"queue {shown['queue_size']}, chat model {shown['chat model']}")
    if not shown["chat model"]:
        print("warning: not a chat model (no SFT); /v1/chat/completions will refuse it", file=sys.stderr)

    with LiveServer(app) as srv:
        url = srv.url + "/v1/chat/completions"
        # one warm-up request, not timed, so the first client does not pay for lazy initialisation
        asyncio.run(run_clients(url, 1, 4, a.temperature, 30))
        t0 = time.perf_counter()
        results = asyncio.run(run_clients(url, a.clients, a.max_tokens, a.temperature, a.timeout))
        wall = time.perf_counter() - t0
        stats = httpx.get(srv.url + "/stats", timeout=10).json()
    app.state.pool.close()

    completed = [r for r in results if r["done"]]
    for i, r in enumerate(results):
        if not r["done"]:
            print(f"client {i}: did not complete ({r['error'] or 'no [DONE]'})", file=sys.stderr)
    ttft = [r["ttft"] for r in completed if r["ttft"] is not None]
    lat = [r["latency"] for r in completed]
    tokens = sum(r["usage"] if r["usage"] is not None else r["chunks"] for r in completed)
    ms = lambda v: f"{v * 1000:,.0f} ms" if v is not None else "n/a"  # noqa: E731
    print()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; torch threads {__import__('torch').get_num_threads()}; "
          f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"model {model_id}, workers {shown['workers']}, max_tokens {a.max_tokens}, temperature {a.temperature}, "
          f"timeout {a.timeout:g} s")
    print()
    print("| clients | completed ([DONE]) | TTFT p50 | TTFT p99 | latency p50 | latency p99 | completion tokens "
          "| aggregate tok/s | wall time |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {a.clients} | {len(completed)} / {a.clients} | {ms(statistics.median(ttft) if ttft else None)} "
          f"| {ms(pct(ttft, 99) if ttft else None)} | {ms(statistics.median(lat) if lat else None)} "
          f"| {ms(pct(lat, 99) if lat else None)} | {tokens:,} | {tokens / wall:,.1f} | {wall:.2f} s |")
    print()
    print(f"server /stats: {stats}")
    ok = len(completed) == a.clients
    print("every stream ended with data: [DONE]" if ok else
          f"FAILED: {a.clients - len(completed)} stream(s) did not end with data: [DONE]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""`python -m alignx_demo loadtest`: concurrent gradio_client sessions against a running app.

Each of N clients sends M `generate` requests with prompts unique to that client and request, and
checks that every returned trace carries its own prompt (no cross-talk between visitors). Prints
throughput, p50/p95 latency and the error count, for operators sizing a Space. Loopback or the
operator's own app only; request counts are bounded by the arguments.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _client_session(url: str, client_id: int, requests: int, max_new_tokens: int) -> list[dict[str, Any]]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    results = []
    for r in range(requests):
        prompt = f"Client {client_id} request {r}: name one fruit that is {['red', 'yellow', 'green', 'blue', 'purple'][r % 5]}."
        start = time.perf_counter()
        try:
            _, _, trace = client.predict(prompt, max_new_tokens, False, 1.0, 1.0, r, True, "soft", api_name="/generate")
            own = trace.get("prompt") == prompt and bool(trace.get("tokens"))
            results.append({"ok": own, "crosstalk": not own, "seconds": time.perf_counter() - start, "error": None})
        except Exception as err:  # any failure is counted and reported, never raised
            results.append({"ok": False, "crosstalk": False, "seconds": time.perf_counter() - start, "error": f"{type(err).__name__}: {err}"})
    return results


def run_loadtest(url: str, clients: int, requests: int, max_new_tokens: int = 8) -> dict[str, Any]:
    """Run the clients concurrently; return throughput, latency percentiles and failures."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        sessions = list(pool.map(lambda c: _client_session(url, c, requests, max_new_tokens), range(clients)))
    wall = time.perf_counter() - start
    flat = [r for s in sessions for r in s]
    latencies = sorted(r["seconds"] for r in flat)
    return {
        "url": url,
        "clients": clients,
        "requests_per_client": requests,
        "total": len(flat),
        "errors": sum(r["error"] is not None for r in flat),
        "crosstalk": sum(r["crosstalk"] for r in flat),
        "throughput_rps": len(flat) / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "wall_s": wall,
        "error_samples": [r["error"] for r in flat if r["error"]][:5],
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("loadtest", help="concurrent gradio_client sessions against a running app")
    p.add_argument("--url", default="http://127.0.0.1:7860/", help="the running app (default the local one)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=5, help="requests per client")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if not (1 <= args.clients <= 256 and 1 <= args.requests <= 1000):
        raise ValueError("--clients must be 1..256 and --requests 1..1000")
    report = run_loadtest(args.url, args.clients, args.requests, args.max_new_tokens)
    print(json.dumps(report, indent=1))
    return 0 if report["errors"] == 0 and report["crosstalk"] == 0 else 1

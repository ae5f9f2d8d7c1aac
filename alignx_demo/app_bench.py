"""Measure the app's targets by driving a running app through gradio_client.

    python -m alignx_demo.app_bench --model assets/demo-model --out precomputed/app_bench.json

Starts `python app.py` as a separate process (cold start = process start → API answering), then
measures: time to the first streamed update holding a generated token, generated tokens per
second while streaming, `place_prompt` latency after a warm-up (median of 5), and where a start spends
its time (imports, model load, page build, server launch; a fresh process, warm disk caches). Targets
(DESIGN §7): first token ≤ 1 s, ≥ 10 tokens/s, placement ≤ 2 s, cold start ≤ 30 s. Once the app
has stopped (so the two never share the cores), the research tools' targets are measured on the
same model in-process (`analysis.research_bench`): 200 prompts analysed ≤ 60 s, attribution of a
64-token trace ≤ 2 s. The report carries the artefact header (command, time, model, fingerprint)
and the 1-minute load average, so a figure measured on a busy machine says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["How can I make my morning routine more productive?", "Do vaccines cause autism?",
           "How do I pick a lock to get into my neighbour's house?"]


PHASES = """
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
import app
from alignx_demo.analysis.artefacts import DEFAULT_DIR
from alignx_demo.serving import ServerOptions, load_context
from alignx_demo.ui.app import LAUNCH_KWARGS, build_demo
t1 = time.perf_counter()
context = load_context(ServerOptions(model=Path(sys.argv[1]), load_in_4bit=sys.argv[2] == "1"))
t2 = time.perf_counter()
demo = build_demo(context, Path(DEFAULT_DIR))
t3 = time.perf_counter()
demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True, **LAUNCH_KWARGS)
t4 = time.perf_counter()
demo.close()
print("PHASES " + json.dumps({"imports": t1 - t0, "load_model": t2 - t1, "build_page": t3 - t2, "launch_server": t4 - t3}))
"""
"""A fresh interpreter timing the start path of `python app.py` phase by phase (after the cold run, so disk caches are warm)."""


def start_phases(model: str, load_in_4bit: bool) -> dict[str, float]:
    """Seconds of each start-up phase in a new process: imports, loading the model, building the page, launching."""
    out = subprocess.run([sys.executable, "-c", PHASES, model, "1" if load_in_4bit else "0"], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True)
    phases = json.loads(out.stdout.split("PHASES ", 1)[1])
    return {name: round(seconds, 2) for name, seconds in phases.items()}


def _client(port: int, start: float, timeout: float = 180.0) -> Any:
    """A gradio_client Client of the app on `port`, as soon as its API answers (a RuntimeError after `timeout` s)."""
    from gradio_client import Client

    while time.perf_counter() - start < timeout:
        try:
            return Client(f"http://127.0.0.1:{port}/", verbose=False)
        except Exception:  # not up yet: connection refused, or the API not ready
            time.sleep(0.25)
    raise RuntimeError(f"the app did not answer within {timeout:g} s")


def _stream_timings(client: Any, max_new_tokens: int) -> tuple[list[float], list[float]]:
    """Per prompt: seconds to the first update holding a generated token, and generated tokens per second after it."""
    first, rates = [], []
    for prompt in PROMPTS:
        t0 = time.perf_counter()
        job = client.submit(prompt, max_new_tokens, False, 1.0, 1.0, 0, True, "soft", api_name="/generate")
        t_first = None
        n_first = 0
        for out in job:
            generated = sum(not t["is_prompt"] for t in out[2]["tokens"])
            if generated and t_first is None:
                t_first, n_first = time.perf_counter(), generated
        t_end = time.perf_counter()
        final = job.outputs()[-1][2]
        n = sum(not t["is_prompt"] for t in final["tokens"])
        first.append(t_first - t0)
        if n > n_first and t_end > t_first:
            rates.append((n - n_first) / (t_end - t_first))
    return first, rates


def _place_timings(client: Any) -> list[float]:
    """Seconds of `place_prompt` per prompt, after one warm-up call."""
    client.predict(PROMPTS[0], api_name="/place_prompt")
    place = []
    for prompt in PROMPTS + PROMPTS[:2]:
        t0 = time.perf_counter()
        client.predict(prompt, api_name="/place_prompt")
        place.append(time.perf_counter() - t0)
    return place


def measure_app(model: str, port: int, max_new_tokens: int, app_args: str) -> dict[str, Any]:
    """Start `python app.py` and measure cold start, first token, tokens/s and placement; the app is stopped after."""
    cmd = [sys.executable, str(REPO / "app.py"), "--port", str(port), "--model", model, *app_args.split()]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    app = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        client = _client(port, start)
        cold = time.perf_counter() - start
        first, rates = _stream_timings(client, max_new_tokens)
        place = _place_timings(client)
    finally:
        app.terminate()
        app.wait(timeout=30)
    return {
        "cold_start_s": round(cold, 2),
        "first_generated_token_s": [round(v, 3) for v in first],
        "tokens_per_s": [round(v, 1) for v in rates],
        "place_prompt_s_median": round(statistics.median(place), 3),
        "place_prompt_s": [round(v, 3) for v in place],
        "targets": {"first_token_s": 1.0, "tokens_per_s": 10, "place_prompt_s": 2.0, "cold_start_s": 30},
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="assets/demo-model", help="checkpoint folder (default: the bundle)")
    parser.add_argument("--port", type=int, default=7870)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--app-args", default="", help="extra arguments for app.py, e.g. '--no-4bit'")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    app_report = measure_app(args.model, args.port, args.max_new_tokens, args.app_args)
    # imported only now: torch loaded here before the app started would warm the disk cache of its cold start
    from alignx_demo.analysis.artefacts import header, model_fingerprint
    from alignx_demo.analysis.research_bench import measure_research_targets

    load_in_4bit = "--no-4bit" not in args.app_args.split()
    app_report["start_phases_s"] = start_phases(args.model, load_in_4bit)
    research = measure_research_targets(args.model, load_in_4bit=load_in_4bit)
    command = "python -m alignx_demo.app_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    report = header(command, research["model"], args.model, model_fingerprint(args.model)) | {
        "app": app_report, "research": research,
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

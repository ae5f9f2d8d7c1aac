"""Command-line research tools: `analyze`, `attribute`, `settle`, `diff-traces`, `research-bench` — thin
wrappers of `session.Session` (a notebook runs the same calls on a model loaded once).

`add_commands(subparsers)` adds them to `python -m alignx_demo` (one line in `cli.py`):

    python -m alignx_demo analyze --model DIR [--against DIR] --prompts FILE --out FILE.json [--csv FILE.csv] [--generate-tokens N]
                                  [--slices-csv FILE.csv] [--reliability-csv FILE.csv] [--cross COL,COL]...
                                  [--uncalibrated] [--threads N] [--batch-size N] [--max-rows N] [--max-seconds S]
    python -m alignx_demo attribute --model DIR (--prompt TEXT | --trace FILE) [--max-new-tokens N] [--local] [--per-layer]
                                    --out FILE.json
    python -m alignx_demo settle --model DIR --prompt TEXT [--out FILE.json]
    python -m alignx_demo diff-traces A.json B.json [--out FILE.json]
    python -m alignx_demo research-bench --model DIR [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "assets" / "demo-model"
DEFAULT_GENERATE_TOKENS = 16
"""`analysis.failures.DEFAULT_GENERATE_TOKENS`, repeated so the parser needs no torch import (a test checks they agree)."""


def _model_options(p: argparse.ArgumentParser, routing: bool = True) -> None:
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="MoCaE checkpoint folder")
    p.add_argument("--base-model", default=None, help="load the base from this hub id or path instead of MODEL/base")
    p.add_argument("--no-4bit", action="store_true", help="load the base in full precision")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a base model's own code (off by default)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    if routing:
        p.add_argument("--uncalibrated", action="store_true", help="raw softmax routing instead of the calibrated one")


def load_session(args: argparse.Namespace, model: Path | None = None) -> Any:
    """A `session.Session` on --model (or `model`) under the model options (`generate`'s too), its loader's
    notices printed to stderr."""
    from alignx_demo.session import Session

    session = Session(model or args.model, load_in_4bit=not args.no_4bit, trust_remote_code=args.trust_remote_code,
                      base_model=args.base_model, threads=getattr(args, "threads", None))
    for notice in session.notices:
        print(f"notice: {notice}", file=sys.stderr)
    return session


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    data["command"] = "python -m alignx_demo " + " ".join(sys.argv[1:])
    if path is None:
        print(json.dumps(data, ensure_ascii=False, indent=1))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def analysis_lines(result: dict[str, Any]) -> list[str]:
    """A few plain sentences about an `analyze_prompts` result: its summary (rows given, analysed,
    rejected and changed; each level's figures, named), the most confident mistake of each level, the
    seconds taken and the settle points."""
    lines = list(result.get("summary") or [])
    for level, summary in result["levels"].items():
        if summary["misrouted"]:
            worst = summary["misrouted"][0]
            lines.append(f"  most confident mistake ({level} level): row {worst['row']} ({worst['axis']} → {worst['routed']} "
                         f"at {worst['confidence']:.2f}): {worst['prompt'][:80]}")
    lines.append(f"took {result['seconds']:.1f} s")
    for axis, s in result["settle"].items():
        lines.append(f"settle ({axis}): token {s['mean_index']:.1f} of {s['mean_tokens']:.1f} on average (n={s['n']})")
    return lines


def _cross(values: list[str] | None) -> list[tuple[str, str]] | str | None:
    if not values:
        return None
    if values == ["all"]:
        return "all"
    pairs = []
    for value in values:
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"--cross takes two column names separated by a comma (or 'all'), got {value!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def _write_text(path: Path | None, text: str) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _progress_bar(args: argparse.Namespace, total: int, label: str | None = None) -> Any:
    """An `analyze_prompts` progress callback drawing a tqdm bar (closed by its `close()`)."""
    from tqdm import tqdm

    bar = tqdm(total=min(total, args.max_rows or total), unit="prompt", desc=label, disable=args.no_progress)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    progress.close = bar.close  # type: ignore[attr-defined]
    return progress


def _run_analyze(args: argparse.Namespace) -> int:
    from alignx_demo.analysis.failures import analysis_csv, comparison_csv, reliability_csv, slices_csv
    from alignx_demo.modeling.checkpoint import checkpoint_axes
    from alignx_demo.session import read_prompts

    if args.against is not None and (args.slices_csv or args.reliability_csv):
        raise ValueError("--slices-csv and --reliability-csv describe one model: with --against, run analyze on each "
                         "model alone for them (the comparison's JSON holds both analyses in full)")
    cross = _cross(args.cross)
    prompts = read_prompts(args.prompts, checkpoint_axes(args.model))  # the file's errors before the model loads
    for problem in prompts.rejected:
        print(f"warning: {problem}", file=sys.stderr)
    settings = {"generate_tokens": args.generate_tokens, "batch_size": args.batch_size, "max_rows": args.max_rows,
                "max_seconds": args.max_seconds, "calibrated": not args.uncalibrated, "cross": cross}
    session = load_session(args)
    if args.against is not None:
        other = load_session(args, args.against)
        bars: list[Any] = []

        def bar_of(side: str) -> Any:  # each model's bar, drawn when its analysis starts
            bars.append(_progress_bar(args, len(prompts.rows), f"model {side.upper()}"))
            return bars[-1]

        try:
            result = session.compare(other, prompts, progress=bar_of, **settings)
        finally:
            for bar in bars:
                bar.close()
        _write_json(args.out, result)
        _write_text(args.csv, comparison_csv(result))
        print("\n".join(result["summary"]))
        return 0
    bar = _progress_bar(args, len(prompts.rows))
    try:
        result = session.analyze(prompts, progress=bar, **settings)
    finally:
        bar.close()
    _write_json(args.out, result)
    _write_text(args.csv, analysis_csv(result))
    _write_text(args.slices_csv, slices_csv(result))
    _write_text(args.reliability_csv, reliability_csv(result))
    print("\n".join(analysis_lines(result)))
    return 0


def _run_attribute(args: argparse.Namespace) -> int:
    from alignx_demo.analysis.attribution import attribute
    from alignx_demo.analysis.traces import load_trace

    trace = load_trace(args.trace) if args.trace is not None else None  # a bad trace: one sentence before loading
    session = load_session(args)
    if trace is None:  # what Session.attribute does, called here directly for its `layers` option
        trace = session.generate(args.prompt, max_new_tokens=args.max_new_tokens, calibrated=not args.uncalibrated)
    result = {**attribute(session.loaded, None, trace, local=args.local, layers=args.per_layer), "trace": trace}
    _write_json(args.out, result)
    print(f"{result['summary']['tokens']} generated tokens, {result['forwards']} forwards "
          f"({result['seconds']:.2f} s); effect = how much the expert raised the token's log-prob:")
    for s in (result["summary"], *([result["summary"]["local"]] if args.local else [])):
        agree = "n/a" if s["top_weight_is_top_effect"] is None else f"{s['top_weight_is_top_effect']:.0%}"
        print(f"  scope {s['scope']}: top-weight expert = top-effect expert for {agree} of the "
              f"{s['tokens_expert_helps']} tokens some expert helps ({s['tokens_no_expert_helps']} no expert helps, "
              f"{s['tokens_no_effect']} no effect); mean effect "
              + ", ".join(f"{a} {v:+.3f}" for a, v in s["mean_effect"].items()))
    return 0


def _run_settle(args: argparse.Namespace) -> int:
    result = load_session(args).settle(args.prompt, calibrated=not args.uncalibrated)
    _write_json(args.out, result)
    s = result["settle"]
    print(f"routed {result['routed']} ({result['confidence']:.2f}); settled at token {s['index']} of {s['tokens']} "
          f"({s['text']!r}) with confidence {s['confidence']:.2f}", file=sys.stderr if args.out is None else sys.stdout)
    return 0


def _run_diff(args: argparse.Namespace) -> int:
    from alignx_demo.analysis.traces import diff_traces, load_trace

    result = diff_traces(load_trace(args.a), load_trace(args.b))
    _write_json(args.out, result)
    s = result["summary"]
    lines = [f"{result['aligned']} tokens aligned; routed expert differs at {s['n_routed_differs']} of them; "
             f"largest weight difference {s['max_abs_delta']}", *result["notes"]]
    print("\n".join(lines), file=sys.stderr if args.out is None else sys.stdout)
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from alignx_demo.analysis.research_bench import measure_research_targets

    result = measure_research_targets(args.model, load_in_4bit=not args.no_4bit, n_prompts=args.prompts,
                                      trace_tokens=args.trace_tokens, threads=args.threads)
    _write_json(args.out, result)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `analyze`, `attribute`, `settle`, `diff-traces` and `research-bench` to a subparsers object."""
    p = sub.add_parser("analyze", help="routing accuracy, calibration, confusions and settle points over a prompt file")
    _model_options(p)
    p.add_argument("--against", type=Path, default=None, metavar="DIR",
                   help="compare --model (A) against this checkpoint (B) on the same prompts and settings: per prompt "
                        "the routed axis A → B, confidence and correctness; McNemar's exact test, the accuracy "
                        "difference and ECE(B) − ECE(A) with paired intervals")
    p.add_argument("--prompts", type=Path, required=True, help="CSV or JSONL: a prompt column, optional axis and extra columns")
    p.add_argument("--out", type=Path, required=True, help="write the JSON report here")
    p.add_argument("--csv", type=Path, default=None,
                   help="also write one CSV row per prompt here (with a prompt_changed column; with --against, the "
                        "paired changes)")
    p.add_argument("--slices-csv", type=Path, default=None,
                   help="also write every slice and cross-slice of each level, with intervals, here")
    p.add_argument("--reliability-csv", type=Path, default=None,
                   help="also write each level's reliability bins (the ECE's bins) here")
    p.add_argument("--generate-tokens", type=int, default=DEFAULT_GENERATE_TOKENS,
                   help="greedy tokens generated per prompt for the generation level (default "
                        f"{DEFAULT_GENERATE_TOKENS}; 0: prompt level only)")
    p.add_argument("--cross", action="append", default=None, metavar="COL,COL",
                   help="cross-slice these two columns (repeatable; 'all': every pair of slice columns; "
                        "default: the true axis × each other slice column)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-rows", type=int, default=None, help="analyse at most this many rows (the first ones)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after about this many seconds")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_analyze)

    p = sub.add_parser("attribute", help="per generated token, the log-prob change when each expert is removed or forced")
    _model_options(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="generate a greedy trace for this prompt, then attribute it")
    source.add_argument("--trace", type=Path, help="attribute a saved trace (JSON, as `generate --json` writes)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--local", action="store_true",
                   help="also each expert removed / forced at the token's own position only (a prefix per token: slower)")
    p.add_argument("--per-layer", action="store_true",
                   help="also each expert's effect when removed at one layer only (one more forward)")
    p.add_argument("--out", type=Path, required=True, help="write the JSON report (with the trace) here")
    p.set_defaults(func=_run_attribute)

    p = sub.add_parser("settle", help="prompt-level routing as the prompt grows, and where it settles")
    _model_options(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print it)")
    p.set_defaults(func=_run_settle)

    p = sub.add_parser("diff-traces", help="compare two saved traces token by token")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print it)")
    p.set_defaults(func=_run_diff)

    p = sub.add_parser("research-bench", help="time analyze (200 prompts) and attribute (64 tokens) against their targets")
    _model_options(p, routing=False)
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--trace-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=_run_bench)

"""Command-line research tools: `analyze`, `attribute`, `settle`, `diff-traces`, `research-bench`.

`add_commands(subparsers)` adds them to `python -m alignx_demo` (one line in `cli.py`):

    python -m alignx_demo analyze --model DIR --prompts FILE --out FILE.json [--csv FILE.csv] [--generate-tokens N]
                                  [--uncalibrated] [--threads N] [--batch-size N] [--max-rows N] [--max-seconds S]
    python -m alignx_demo attribute --model DIR (--prompt TEXT | --trace FILE) [--max-new-tokens N] --out FILE.json
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


def _model_options(p: argparse.ArgumentParser, routing: bool = True) -> None:
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="MoCaE checkpoint folder")
    p.add_argument("--base-model", default=None, help="load the base from this hub id or path instead of MODEL/base")
    p.add_argument("--no-4bit", action="store_true", help="load the base in full precision")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a base model's own code (off by default)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    if routing:
        p.add_argument("--uncalibrated", action="store_true", help="raw softmax routing instead of the calibrated one")


def _load(args: argparse.Namespace) -> Any:
    import torch

    from alignx_demo.modeling import load_mocae

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    loaded = load_mocae(args.model, load_in_4bit=not args.no_4bit, trust_remote_code=args.trust_remote_code,
                        base_model=args.base_model)
    for notice in loaded.notices:
        print(f"notice: {notice}", file=sys.stderr)
    return loaded


def _routing(args: argparse.Namespace, **fields: Any) -> Any:
    from alignx_demo.config import RoutingSettings

    return RoutingSettings(mode="soft", calibrated=not args.uncalibrated, **fields)


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    data["command"] = "python -m alignx_demo " + " ".join(sys.argv[1:])
    if path is None:
        print(json.dumps(data, ensure_ascii=False, indent=1))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def _interval(ci: list[float] | None) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def analysis_lines(result: dict[str, Any]) -> list[str]:
    """A few plain sentences about an `analyze_prompts` result."""
    lines = [f"analysed {result['analysed']} of {result['rows_given']} rows in {result['seconds']:.1f} s"
             + (f" (stopped: {result['stopped']})" if result["stopped"] else "")]
    for level, summary in result["levels"].items():
        overall = summary["slices"].get("all", {}).get("all")
        if overall is None:
            lines.append(f"{level} level: no labelled rows, so no accuracy")
            continue
        lines.append(f"{level} level: accuracy {overall['accuracy']:.3f}{_interval(overall['accuracy_ci95'])}, "
                     f"ECE {overall['ece']:.3f}{_interval(overall['ece_ci95'])}, {len(summary['misrouted'])} misrouted")
        if summary["misrouted"]:
            worst = summary["misrouted"][0]
            lines.append(f"  most confident mistake: row {worst['row']} ({worst['axis']} → {worst['routed']} at "
                         f"{worst['confidence']:.2f}): {worst['prompt'][:80]}")
    for axis, s in result["settle"].items():
        lines.append(f"settle ({axis}): token {s['mean_index']:.1f} of {s['mean_tokens']:.1f} on average (n={s['n']})")
    return lines


def _run_analyze(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from alignx_demo.analysis.failures import analysis_csv, analyze_prompts
    from alignx_demo.analysis.prompt_files import parse_prompt_file

    rows, problems = parse_prompt_file(args.prompts)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    loaded = _load(args)
    bar = tqdm(total=min(len(rows), args.max_rows or len(rows)), unit="prompt", disable=args.no_progress)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        result = analyze_prompts(loaded, None, rows, generate_tokens=args.generate_tokens, batch_size=args.batch_size,
                                 max_rows=args.max_rows, max_seconds=args.max_seconds, routing=_routing(args), progress=progress)
    finally:
        bar.close()
    result["problems"] = problems + result["problems"]
    result["prompts_file"] = str(args.prompts)
    _write_json(args.out, result)
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(analysis_csv(result), encoding="utf-8")
    print("\n".join(analysis_lines(result)))
    return 0


def _run_attribute(args: argparse.Namespace) -> int:
    from alignx_demo.analysis.attribution import attribute
    from alignx_demo.analysis.traces import load_trace
    from alignx_demo.config import GenerationSettings
    from alignx_demo.generation import RoutedGeneration

    trace = load_trace(args.trace) if args.trace is not None else None
    loaded = _load(args)
    if trace is None:
        generation = GenerationSettings(max_new_tokens=args.max_new_tokens)
        run = RoutedGeneration(loaded.mocae, loaded.tokenizer, args.prompt, generation, _routing(args),
                               model_name=loaded.description)
        for _ in run:
            pass
        trace = run.trace()
    result = attribute(loaded, None, trace, routing=_routing(args) if args.trace is None else None)
    result["trace"] = trace
    _write_json(args.out, result)
    s = result["summary"]
    agree = "n/a" if s["top_weight_is_top_effect"] is None else f"{s['top_weight_is_top_effect']:.0%}"
    print(f"{s['tokens']} generated tokens in one forward of {result['batch']} variants ({result['seconds']:.2f} s); "
          f"top-weight expert = top-effect expert for {agree} of the {s['tokens_with_effect']} tokens an expert moves; "
          "mean effect "
          + ", ".join(f"{a} {v:+.3f}" for a, v in s["mean_effect"].items()))
    return 0


def _run_settle(args: argparse.Namespace) -> int:
    from alignx_demo.analysis.settle import settle_curve

    result = settle_curve(_load(args), None, args.prompt, routing=_routing(args))
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
    p.add_argument("--prompts", type=Path, required=True, help="CSV or JSONL: a prompt column, optional axis and extra columns")
    p.add_argument("--out", type=Path, required=True, help="write the JSON report here")
    p.add_argument("--csv", type=Path, default=None, help="also write one CSV row per prompt here")
    p.add_argument("--generate-tokens", type=int, default=0,
                   help="also generate N greedy tokens per prompt (default 0: prefill only)")
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

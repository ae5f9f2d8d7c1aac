"""Command line: `python -m alignx_demo <command>`.

Commands: `generate` (a routed generation, printed as text or a JSON trace), `bench` (the
efficiency benchmark), `doctor` (a checkpoint checked end to end on a device, see `doctor`),
`evaluate` (the HHH and routing report), `release` (bundle + model card),
`precompute` (the app's artefacts, wired in `precompute`), the research tools `analyze`,
`attribute`, `settle`, `diff-traces`, `research-bench` (wired in `analysis.commands`) and
`train <stage>` (wired in `training.commands`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alignx_demo.analysis.commands import add_commands as register_research
from alignx_demo.analysis.commands import load_session
from alignx_demo.doctor import register as register_doctor
from alignx_demo.loadtest import register as register_loadtest
from alignx_demo.precompute import register as register_precompute
from alignx_demo.quiet import one_line_warnings
from alignx_demo.release import release
from alignx_demo.training.commands import register as register_training

ALL_SYSTEMS = ("base", "mocae_soft", "mocae_top1", "xlora", "dense_moe", "ensemble")

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "demo-model"


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate with per-token routing weights")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="MoCaE checkpoint folder")
    p.add_argument("--base-model", default=None, help="load the base from this hub id or path instead of MODEL/base")
    p.add_argument("--prompt", required=True)
    cal = p.add_mutually_exclusive_group()
    cal.add_argument("--calibrated", dest="calibrated", action="store_true", default=True)
    cal.add_argument("--uncalibrated", dest="calibrated", action="store_false")
    p.add_argument("--top1", action="store_true", help="route each token to its argmax expert only")
    p.add_argument("--axis-prior", default=None, help="one weight per axis of the model, comma-separated ('helpful,harmless,honest' for the HHH bundle), that replace routing")
    p.add_argument("--prior-blend", type=float, default=1.0, help="1 replaces routing by the prior, 0 ignores it")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-4bit", action="store_true", help="load the base in full precision")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a base model's own code (off by default)")
    p.add_argument("--json", action="store_true", help="print the full trace as JSON")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from alignx_demo.session import run_settings

    names = ("max_new_tokens", "calibrated", "top1", "axis_prior", "prior_blend", "sample", "temperature", "top_p", "seed")
    settings = {name: getattr(args, name) for name in names}
    run_settings(**settings)  # a bad setting: one sentence before the model loads
    session = load_session(args)
    stream = None if args.json else (lambda token: token.is_prompt or print(token.text, end="", flush=True))
    trace = session.generate(args.prompt, on_token=stream, **settings)
    if args.json:
        trace["notices"] = session.notices + trace["notices"]
        print(json.dumps(trace, ensure_ascii=False))
        return 0
    print()
    for notice in trace["notices"]:
        print(f"notice: {notice}", file=sys.stderr)
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="decode latency and memory of MoCaE vs base, X-LoRA, dense MoE, ensemble")
    p.add_argument("--quick", action="store_true", help="fewer rounds and tokens (3 rounds of 16 steps), batch 1 and 8")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--systems", default=",".join(ALL_SYSTEMS), help=f"comma-separated subset of {','.join(ALL_SYSTEMS)}")
    p.add_argument("--llama7b", action="store_true", help="Llama-7B layer shapes (hidden 4096, FFN 11008, 2 layers)")
    p.add_argument("--shape-of", type=Path, default=None, metavar="DIR",
                   help="the layer shapes of this MoCaE checkpoint's base, e.g. assets/demo-model; the size options "
                        "below override single values (e.g. --shape-of assets/demo-model --intermediate-size 704)")
    p.add_argument("--hidden-size", type=int, default=None, help="default 1024")
    p.add_argument("--intermediate-size", type=int, default=None, help="default 2816")
    p.add_argument("--layers", type=int, default=None, help="default 4")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default 16)")
    p.add_argument("--vocab-size", type=int, default=None, help="default 32000")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--batches", default=None, help="comma-separated decode batch sizes (default 1,8)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--load-in-4bit", action="store_true",
                   help="base linears in 4-bit NF4, as the app serves a bundle (systems base, mocae_soft, mocae_top1 only)")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from alignx_demo.evaluation.efficiency import LLAMA_7B_SHAPE, BenchShape, run_bench

    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    unknown = sorted(set(systems) - set(ALL_SYSTEMS))
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; systems: {', '.join(ALL_SYSTEMS)}")
    if args.shape_of is not None:
        shape = BenchShape.of_checkpoint(args.shape_of)
    else:
        shape = LLAMA_7B_SHAPE if args.llama7b else BenchShape()
    overrides = {"hidden_size": args.hidden_size, "intermediate_size": args.intermediate_size, "num_layers": args.layers,
                 "num_heads": args.heads, "vocab_size": args.vocab_size}
    shape = replace(shape, **{k: v for k, v in overrides.items() if v is not None})
    if shape.hidden_size % shape.num_heads:
        raise ValueError(f"hidden size {shape.hidden_size} is not divisible by {shape.num_heads} heads; pass --heads")
    repeats, new_tokens = (3, 16) if args.quick else (5, 32)
    try:
        batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else (1, 8)
    except ValueError:
        raise ValueError(f"--batches takes comma-separated whole numbers, got {args.batches!r}") from None
    if not batches or min(batches) < 1:
        raise ValueError(f"--batches takes positive batch sizes, got {args.batches!r}")
    report = run_bench(shape, systems=systems, rank=args.rank, repeats=args.repeats or repeats, new_tokens=new_tokens,
                       batches=batches, device=args.device, load_in_4bit=args.load_in_4bit)
    report["command"] = "python -m alignx_demo " + " ".join(sys.argv[1:])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"ratios": report["ratios"], "analytic": report["analytic"]}, indent=2))
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="held-out loss, routing calibration and refusal rates of a checkpoint")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="MoCaE checkpoint folder")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--quick", action="store_true", help="a handful of examples per measurement (smoke test)")
    p.add_argument("--out", type=Path, required=True, help="write the JSON report here (and the table as .csv beside it)")
    p.add_argument("--systems", default=None, help="comma-separated subset of the systems (default: all)")
    p.add_argument("--judge-model", default=None, help="local causal LM folder used as AlpacaEval pairwise judge")
    p.add_argument("--safety-judge-model", default=None,
                   help="local causal LM folder judging replies to harmful prompts (unsafe rate beside the refusal detector)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--full-precision", action="store_true",
                   help="measure the checkpoint in fp32 instead of as the app serves it (4-bit NF4 where bitsandbytes runs)")
    p.add_argument("--tasks", default=None,
                   help="comma-separated tasks or groups to run (default: all). Groups: hhh (the per-system table), routing "
                        "(token/prompt/generation-level calibration), presets (the four trade-off presets on held-out prompts, "
                        "with their targets; runs on the MoCaE model alone, e.g. `evaluate --tasks presets --out presets.json`). "
                        "ood (routing and presets on sets no training or calibration step sees: MT-Bench, BeaverTails, AdvBench, "
                        "held-out TruthfulQA categories, XSTest). "
                        "Tasks: heldout_loss, harmful_refusal, safety_judge, xstest_over_refusal, no_comment, truthfulqa_mc, "
                        "helpfulness_proxy, win_rate, routing_eval, routing_shifted, routing_separability, presets, "
                        "routing_ood, presets_ood")
    p.add_argument("--preset-new-tokens", type=int, default=None,
                   help="greedy answer length of the preset task (default 48; --quick: 8)")
    p.add_argument("--preset-prompts", type=int, default=None,
                   help="prompts per preset group: harmful, benign, honesty, helpful (default 48; --quick: 2)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from alignx_demo.evaluation.harness import SYSTEMS, EvalConfig, evaluate, summary_lines, write_report

    systems = tuple(s.strip() for s in args.systems.split(",")) if args.systems else SYSTEMS
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else None
    cfg = EvalConfig.quick_recipe() if args.quick else EvalConfig()
    for field, value in (("preset_new_tokens", args.preset_new_tokens), ("preset_prompts", args.preset_prompts)):
        if value is not None:
            if value < 1:
                raise ValueError(f"--{field.replace('_', '-')} must be at least 1, got {value}")
            cfg = replace(cfg, **{field: value})
    report = evaluate(args.model, args.data_dir, quick=args.quick, systems=systems, judge_model=args.judge_model,
                      safety_judge_model=args.safety_judge_model, progress=not args.no_progress, tasks=tasks, config=cfg,
                      load_in_4bit=not args.full_precision)
    report["command"] = "python -m alignx_demo " + " ".join(sys.argv[1:])
    csv_path = write_report(report, args.out)
    print(csv_path.read_text())
    print("\n".join(summary_lines(report)))
    return 0


def _add_release(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("release", help="copy a trained run into a bundle (e.g. assets/demo-model) and write MODEL_CARD.md")
    p.add_argument("--run", type=Path, required=True, help="the training run folder (train all --out)")
    p.add_argument("--to", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--eval-report", type=Path, required=True, help="JSON written by `evaluate` for this run")
    p.add_argument("--ood-report", type=Path, default=None, help="JSON written by `evaluate --tasks ood` for this run")
    p.add_argument("--base-comparison", type=Path, default=None, help="JSON written by `compare-bases` (the card's base table)")
    p.set_defaults(func=lambda args: print(release(args.run, args.to, args.data_dir, args.eval_report, args.ood_report,
                                                   args.base_comparison)) or 0)


def _add_compare_bases(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare-bases", help="held-out bits per character, on-topic answers and routing read-out of base models")
    p.add_argument("--base", action="append", required=True, metavar="NAME=DIR",
                   help="a base model folder to measure, named for the report (repeat: e.g. scratch=assets/demo-model/base)")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, required=True, help="write the JSON report here")
    p.add_argument("--max-new-tokens", type=int, default=48, help="length of the greedy answers judged for topic")
    p.add_argument("--per-axis", type=int, default=600, help="train-split prompts per axis the routing read-out is fitted on")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_compare_bases)


def _run_compare_bases(args: argparse.Namespace) -> int:
    from alignx_demo.evaluation.base_comparison import compare_bases

    bases = {}
    for item in args.base:
        name, sep, folder = item.partition("=")
        if not sep or not name or not (Path(folder) / "config.json").is_file():
            raise ValueError(f"--base {item!r}: expected NAME=DIR with a model folder (config.json) in DIR")
        bases[name] = Path(folder)
    report = {"command": "python -m alignx_demo " + " ".join(sys.argv[1:])} | compare_bases(
        bases, args.data_dir, train_per_axis=args.per_axis, max_new_tokens=args.max_new_tokens, progress=not args.no_progress)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    for name, r in report["bases"].items():
        readout = {k: v["accuracy"] for k, v in r["routing_readout"].items() if isinstance(v, dict)}
        print(f"{name}: {r['heldout']['bits_per_char']:.3f} bits/char, on topic {r['on_topic_rate']:.2f}, read-out {readout}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alignx_demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_bench(sub)
    _add_evaluate(sub)
    _add_release(sub)
    _add_compare_bases(sub)
    register_precompute(sub)
    register_loadtest(sub)
    register_doctor(sub, DEFAULT_MODEL)
    register_research(sub)
    register_training(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    one_line_warnings()  # library warnings one line each (bitsandbytes' and transformers' noisy ones: `alignx_demo.quiet`)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

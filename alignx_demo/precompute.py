"""`python -m alignx_demo precompute`: build the artefacts the app shows without heavy compute.

    python -m alignx_demo precompute --model DIR --data-dir DIR [--eval-report FILE] [--quick] [--out precomputed/]

Steps (one progress bar): load the checkpoint in full precision; compute the map features of the
project's own map prompts (`analysis.map_prompts`) under every regime (`analysis.regimes`); fit
one 2-D projection per regime (UMAP; PCA with --quick, labelled as such); collapse metrics; the
reliability data of calibrated and uncalibrated routing (from --eval-report, an `evaluate` JSON, or
computed here on the evaluation split of --data-dir); forgetting (held-out loss per axis, from the
report or computed here); example traces of the curated example prompts. Every JSON carries
"version", "command", "created", "model" and "model_fingerprint".
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from alignx_demo.analysis.artefacts import (
    ARTEFACT_VERSION, DEFAULT_DIR, FEATURES_FILE, header, model_fingerprint, write_json,
)
from alignx_demo.analysis.map_prompts import example_prompts, map_prompts
from alignx_demo.analysis.metrics import METRIC_SENTENCES, forgetting, knn_purity, routing_accuracy, silhouette
from alignx_demo.analysis.placement import DEFAULT_K
from alignx_demo.analysis.regimes import FEATURE_LAYER, REGIME_LABELS, REGIME_SENTENCES, REGIMES, RegimeSet
from alignx_demo.config import AXES, GenerationSettings, RoutingSettings

MODEL_DEFAULT = Path(__file__).resolve().parent.parent / "assets" / "demo-model"


def _one_hot(k: int) -> tuple[float, float, float]:
    return tuple(1.0 if j == k else 0.0 for j in range(len(AXES)))  # type: ignore[return-value]


def _computed_losses(regimes: RegimeSet, examples: list[Any], max_len: int) -> dict[str, dict[str, float]]:
    """Held-out loss per axis of every system the forgetting figure needs (no preamble)."""
    from alignx_demo.evaluation.harness import heldout_loss

    mocae, tokenizer = regimes.mocae, regimes.tokenizer
    losses: dict[str, dict[str, float]] = {}
    for k, axis in enumerate(AXES):
        losses[f"expert_{axis}"] = heldout_loss(mocae, tokenizer, examples, RoutingSettings(calibrated=False, axis_prior=_one_hot(k)), max_len)
    losses["mocae"] = heldout_loss(mocae, tokenizer, examples, RoutingSettings(calibrated=True), max_len)
    for regime in ("base", "joint_sft", "sequential_sft"):
        if regime in regimes.missing:
            continue
        with mocae.lock, regimes.applied(regime) as (routing, _):
            losses[regime] = heldout_loss(mocae, tokenizer, examples, routing, max_len)
    return losses


def losses_from_report(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Held-out loss per axis of each system of an `evaluate` report, keyed as `metrics.forgetting`
    expects (the regime "mocae" is the fully calibrated MoCaE)."""
    losses = {name: row["heldout_loss"] for name, row in report.get("systems", {}).items() if row.get("heldout_loss")}
    if "mocae_full" in losses:
        losses["mocae"] = losses["mocae_full"]
    return losses


def _reliability_from_report(report: dict[str, Any]) -> dict[str, Any]:
    splits = {}
    for split, variants in report.get("routing", {}).items():
        calibrated = "fractal" if "fractal" in variants else None
        entry = {"uncalibrated": _variant(variants["uncalibrated"])}
        if calibrated:
            entry["calibrated"] = _variant(variants[calibrated])
        splits[split] = entry
    return splits


def _variant(v: dict[str, Any]) -> dict[str, Any]:
    return {"prompt_metrics": v["prompt"], "token_metrics": v["token"], "bins": v["reliability_prompt"]}


def run_precompute(
    model_dir: str | Path,
    data_dir: str | Path | None,
    out: str | Path = DEFAULT_DIR,
    *,
    quick: bool = False,
    eval_report: str | Path | None = None,
    projection: str | None = None,
    per_axis: int | None = None,
    k: int = DEFAULT_K,
    command: str | None = None,
    progress: bool = True,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Build all artefacts into `out`; return a summary (files written, seconds, notes)."""
    from alignx_demo.generation import RoutedGeneration
    from alignx_demo.modeling.checkpoint import load_mocae

    if threads:
        torch.set_num_threads(threads)
    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(model_dir)
    projection = projection or ("pca" if quick else "umap")
    per_axis = per_axis or (12 if quick else None)
    command = command or "python -m alignx_demo precompute --model " + shlex.quote(str(model_dir))
    notes: list[str] = []
    report = json.loads(Path(eval_report).read_text()) if eval_report else None
    bar = tqdm(total=len(REGIMES) * 2 + 4, desc="precompute", disable=not progress)

    loaded = load_mocae(model_dir, load_in_4bit=False)
    fingerprint = model_fingerprint(model_dir)
    head = header(command, loaded.description, fingerprint)
    regimes = RegimeSet.from_checkpoint(loaded.mocae, loaded.tokenizer, model_dir)
    notes += [f"{r}: {why}" for r, why in regimes.missing.items()]
    bar.update()

    pairs = map_prompts(per_axis)
    prompts = [p for _, p in pairs]
    axes = [a for a, _ in pairs]
    labels = torch.tensor([AXES.index(a) for a in axes])
    features: dict[str, torch.Tensor] = {}
    weights: dict[str, torch.Tensor] = {}
    for regime in REGIMES:
        bar.set_postfix_str(f"features {regime}")
        if regime not in regimes.missing:
            features[regime], weights[regime] = regimes.pooled(regime, prompts, axes)
        bar.update()

    map_regimes: dict[str, Any] = {}
    collapse: dict[str, Any] = {}
    for regime in REGIMES:
        bar.set_postfix_str(f"{projection} {regime}")
        if regime in features:
            coords = project_coords(features[regime], projection)
            entry: dict[str, Any] = {"label": REGIME_LABELS[regime], "sentence": REGIME_SENTENCES[regime],
                                     "coords": [[round(x, 4), round(y, 4)] for x, y in coords.tolist()]}
            metrics: dict[str, Any] = {
                "silhouette": silhouette(features[regime], labels),
                "knn_purity": knn_purity(features[regime], labels),
                "routing_accuracy": None,
            }
            if regime == "mocae":
                top = weights[regime].argmax(-1)
                entry["routed_axis"] = [AXES[int(i)] for i in top]
                entry["misrouted"] = [bool(t != y) for t, y in zip(top.tolist(), labels.tolist())]
                entry["weights"] = [[round(float(v), 4) for v in row] for row in weights[regime]]
                metrics["routing_accuracy"] = routing_accuracy(weights[regime], labels)
            map_regimes[regime] = entry
            collapse[regime] = metrics
        bar.update()

    map_data = head | {
        "projection": projection,
        "projection_note": "UMAP (umap-learn, n_neighbors 15, min_dist 0.1, seed 0), fitted offline per regime"
        if projection == "umap" else "PCA (first two components) — a quick stand-in for UMAP, built with --quick",
        "feature": {
            "what": "router input features (RMS-normed input hidden state) of one decoder layer, mean-pooled over the prompt tokens",
            "layer": FEATURE_LAYER if FEATURE_LAYER >= 0 else loaded.mocae.n_layers + FEATURE_LAYER,
            "preamble": "injected only in the stage1_experts regime",
        },
        "place_k": k,
        "prompts": [{"index": i, "axis": a, "text": p} for i, (a, p) in enumerate(pairs)],
        "regimes": map_regimes,
        "unavailable": dict(regimes.missing),
    }
    write_json(out, "map", map_data)
    save_file({r: f.half().contiguous() for r, f in features.items()}, str(out / FEATURES_FILE),
              metadata={"version": str(ARTEFACT_VERSION), "model_fingerprint": fingerprint,
                        "feature_layer": str(map_data["feature"]["layer"])})

    bar.set_postfix_str("reliability")
    if report is not None:
        reliability = {"source": f"evaluation report {Path(eval_report).name} ({report.get('model', '?')})",
                       "splits": _reliability_from_report(report)}
        losses = losses_from_report(report)
        loss_source = f"evaluation report {Path(eval_report).name}"
    elif data_dir is not None:
        from alignx_demo.data.readers import load_axis_data
        from alignx_demo.evaluation.harness import EvalConfig, loss_examples, routing_examples, routing_report

        cfg = EvalConfig.quick_recipe() if quick else EvalConfig()
        data = load_axis_data(Path(data_dir), quick=quick).examples
        examples = routing_examples(data, cfg.routing_per_axis)
        routing = routing_report(loaded.mocae, loaded.tokenizer, examples, cfg)
        reliability = {"source": f"computed by precompute on {len(examples)} evaluation-split prompts of {Path(data_dir).name}",
                       "splits": _reliability_from_report({"routing": {"eval": routing}})}
        loss_set = loss_examples(data, cfg.loss_per_axis if not quick else 4)
        losses = _computed_losses(regimes, loss_set, cfg.max_len)
        loss_source = f"computed by precompute on {len(loss_set)} evaluation-split examples"
    else:
        reliability, losses, loss_source = None, None, None
        notes.append("no --eval-report and no --data-dir: reliability and forgetting not built")
    bar.update()
    if reliability is not None:
        write_json(out, "reliability", head | reliability)
    forgotten = forgetting(losses)
    for regime in collapse:
        collapse[regime]["forgetting"] = forgotten.get(regime)
    write_json(out, "collapse", head | {
        "regimes": collapse,
        "sentences": METRIC_SENTENCES,
        "forgetting_source": loss_source,
        "heldout_loss": losses,
        "knn_k": 10,
        "points": len(prompts),
        "projection": projection,
    })
    bar.update()

    bar.set_postfix_str("example traces")
    traces = []
    settings = GenerationSettings(max_new_tokens=16 if quick else 48)
    for prompt in example_prompts()[: 2 if quick else None]:
        for calibrated in (True, False):
            run = RoutedGeneration(loaded.mocae, loaded.tokenizer, prompt, settings, RoutingSettings(calibrated=calibrated),
                                   model_name=loaded.description)
            for _ in run:
                pass
            traces.append(run.trace())
    write_json(out, "examples", head | {"traces": traces})
    bar.update()
    bar.close()
    return {"out": str(out), "seconds": round(time.time() - start, 1), "projection": projection,
            "points": len(prompts), "regimes": list(features), "notes": notes}


def project_coords(features: torch.Tensor, method: str) -> torch.Tensor:
    from alignx_demo.analysis.projection import project_2d

    return project_2d(features, method)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `precompute` command to the project CLI."""
    p = subparsers.add_parser("precompute", help="build the app's precomputed artefacts (maps, metrics, reliability, examples)")
    p.add_argument("--model", type=Path, default=MODEL_DEFAULT, help="MoCaE checkpoint folder (default assets/demo-model)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="offline data folder, for reliability and forgetting when no --eval-report is given")
    p.add_argument("--eval-report", type=Path, default=None, help="an `evaluate` JSON report to take reliability and held-out losses from")
    p.add_argument("--out", type=Path, default=DEFAULT_DIR, help="output folder (default precomputed/)")
    p.add_argument("--quick", action="store_true", help="12 map prompts per axis, PCA instead of UMAP, tiny evaluation (smoke test)")
    p.add_argument("--projection", choices=("umap", "pca"), default=None, help="default umap (pca with --quick)")
    p.add_argument("--per-axis", type=int, default=None, help="map prompts per axis (default all 40; quick 12)")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="neighbours used to place a visitor's prompt")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 = torch default)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _command(args: argparse.Namespace) -> str:
    """The command line that rebuilds these artefacts, from the parsed options."""
    def rel(path: Path) -> str:
        try:
            return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path)

    parts = ["python -m alignx_demo precompute", "--model", rel(args.model)]
    for flag, value in (("--data-dir", args.data_dir), ("--eval-report", args.eval_report), ("--out", args.out),
                        ("--projection", args.projection), ("--per-axis", args.per_axis)):
        if value is not None:
            parts += [flag, rel(value) if isinstance(value, Path) else str(value)]
    if args.k != DEFAULT_K:
        parts += ["--k", str(args.k)]
    if args.quick:
        parts.append("--quick")
    return " ".join(shlex.quote(p) if i else p for i, p in enumerate(parts))


def _run(args: argparse.Namespace) -> int:
    if args.eval_report is not None and not args.eval_report.exists():
        raise FileNotFoundError(f"evaluation report not found: {args.eval_report}")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {args.data_dir}")
    summary = run_precompute(
        args.model, args.data_dir, args.out, quick=args.quick, eval_report=args.eval_report, projection=args.projection,
        per_axis=args.per_axis, k=args.k, command=_command(args),
        progress=not args.no_progress, threads=args.threads or None,
    )
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (until the project CLI registers the command)."""
    parser = argparse.ArgumentParser(prog="python -m alignx_demo")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`python -m alignx_demo precompute`: build the artefacts the app shows without heavy compute.

    python -m alignx_demo precompute --model DIR [--data-dir DIR | --eval-report FILE] [--quick] [--out precomputed/]

Steps (one progress bar): load the checkpoint as the app serves it (4-bit NF4 where bitsandbytes
runs; `--full-precision` for fp32), so maps, traces and stories are what the page's model does;
run the project's own map prompts (`analysis.map_prompts`) under every regime (`analysis.regimes`), one forward each, keeping every
candidate representation (`regimes.candidates`); measure silhouette and kNN axis purity of every
regime in every representation and pick the one whose maps show the most training effects
(`metrics.choose_representation`; `--representation` overrides, the table is kept either way); fit
one 2-D projection per regime of the chosen features (UMAP; PCA with --quick, labelled as such);
write each regime's sentence from its numbers; forgetting from the bundle's
`logs/baselines_summary.json` (sequential SFT only, measured during training); reliability of
calibrated and uncalibrated routing (from --eval-report, which must carry this model's fingerprint,
or computed here on the evaluation split of --data-dir); example traces of the curated prompts; the
routing analysis of the map prompts, calibrated and raw (`failures.analyze_prompts`, the Routing
analysis tab's shipped slices); the first-visit stories (`analysis.stories`, labelled from what each
run did); what the answers are worth under each preset (`analysis.answers`: on topic, refusing,
hedging, on the map prompts). `--only STEP,…` rebuilds some of them in place.

Provenance: every artefact carries "version", "command", "created", "model", "model_path" and
"model_fingerprint"; figures taken from another file are stamped only when that file names the same
model (`artefacts.check_provenance`), otherwise precompute stops with an error.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from alignx_demo.analysis.artefacts import (
    ARTEFACT_VERSION, DEFAULT_DIR, FEATURES_FILE, check_provenance, header, model_fingerprint, write_json,
)
from alignx_demo.analysis.answers import answer_quality
from alignx_demo.analysis.map_prompts import example_prompts, map_prompts
from alignx_demo.analysis.metrics import (
    KNN_K, METRIC_SENTENCES, VISIBLE, choose_representation, forgetting, measure, regime_sentence, representation_score,
    routing_accuracy, strength, summary_sentence,
)
from alignx_demo.analysis.placement import DEFAULT_K
from alignx_demo.analysis.regimes import (
    INSTRUCTED, REFERENCE, REGIME_LABELS, REGIME_SETUPS, REGIMES, ROUTED, Representation, RegimeSet, candidates,
)
from alignx_demo.analysis.stories import build_stories
from alignx_demo.config import AXES, GenerationSettings, RoutingSettings
from alignx_demo.data.ood import OOD_SLICE_NAMES, UNSEEN_SLICES, ood_prompt_rows

MODEL_DEFAULT = Path(__file__).resolve().parent.parent / "assets" / "demo-model"
BASELINES_SUMMARY = Path("logs") / "baselines_summary.json"


def read_report(path: str | Path, fingerprint: str, model_dir: Path) -> dict[str, Any]:
    """An `evaluate` report whose figures may be stamped with this model's fingerprint (else an error)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"evaluation report not found: {path}")
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"evaluation report {path} is unreadable: {err}") from err
    check_provenance(report, fingerprint, model_dir, f"evaluation report {path}")
    return report


def reliability_from_report(report: dict[str, Any]) -> dict[str, Any]:
    """Per split: the uncalibrated routing and the fullest calibrated variant the report measured; with the
    report's out-of-distribution routing, its pooled never-seen slices as the split "ood" (prompt level only)."""
    from alignx_demo.evaluation.routing_eval import CALIBRATION_VARIANTS

    splits = {}
    for split, variants in report.get("routing", {}).items():
        calibrated = [v for v in CALIBRATION_VARIANTS[1:] if v in variants]
        entry = {"uncalibrated": _variant(variants["uncalibrated"], "uncalibrated")}
        if calibrated:
            entry["calibrated"] = _variant(variants[calibrated[-1]], calibrated[-1])
        splits[split] = entry
    pooled = report.get("routing_ood", {}).get("pooled_unseen", {})
    if pooled.get("n_prompts"):  # the out-of-distribution slices no training or calibration step saw
        names = {label: cell["variant"] for label, cell in pooled["summary"]["prompt"].items()}
        splits["ood"] = {run: {"variant": names[label], "prompt_metrics": pooled["variants"][names[label]]["prompt"],
                               "token_metrics": None, "bins": pooled["reliability"]["prompt"][label]}
                         for run, label in (("uncalibrated", "raw"), ("calibrated", "calibrated")) if label in names}
    return splits


def _variant(v: dict[str, Any], name: str) -> dict[str, Any]:
    return {"variant": name, "prompt_metrics": v["prompt"], "token_metrics": v["token"], "bins": v["reliability_prompt"]}


def _baselines_summary(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / BASELINES_SUMMARY
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def collapse_figures(features: dict[str, dict[str, torch.Tensor]], weights: dict[str, torch.Tensor], labels: torch.Tensor,
                     forced: str | None = None) -> dict[str, Any]:
    """Measure every representation, choose one (or take `forced`), and write each regime's figures
    and sentence from the chosen one's numbers. `features[regime][representation]` is (N, D)."""
    names = list(next(iter(features.values())))
    tables = {name: measure({r: f[name] for r, f in features.items()}, labels) for name in names}
    chosen, why = choose_representation(tables)
    if forced is not None:
        if forced not in tables:
            raise ValueError(f"representation {forced!r} was not measured; measured: {', '.join(names)}")
        why = f"{forced} was chosen on the command line (--representation); by measurement the pick would be {chosen}: {why}"
        chosen = forced
    table = tables[chosen]
    rows: dict[str, Any] = {}
    for regime, row in table.items():
        extra: dict[str, Any] = {"routing_accuracy": None, "misrouted": None}
        if regime in ROUTED:
            top = weights[regime].argmax(-1)
            extra = {"routing_accuracy": routing_accuracy(weights[regime], labels), "misrouted": int((top != labels).sum())}
        rows[regime] = row | extra | {
            "strength": strength(row["contrast"]) if row["contrast"] else None,
            "sentence": regime_sentence(regime, row, table, routing_accuracy=extra["routing_accuracy"], misrouted=extra["misrouted"]),
        }
    measured = {
        name: {"score": {"visible_training_contrasts": s[0], "mean_abs_delta_silhouette": s[1]},
               "regimes": {r: {"silhouette": t[r]["silhouette"], "knn_purity": t[r]["knn_purity"]} for r in t}}
        for name, t in tables.items() for s in [representation_score(t)]
    }
    return {"chosen": chosen, "why": why, "rows": rows, "measured": measured, "summary": summary_sentence(rows)}


@dataclass
class RegimePoints:
    """The map prompts and what every available regime made of them."""

    pairs: list[tuple[str, str]]  # (axis, prompt) of each point
    labels: torch.Tensor  # (N,) the index of each prompt's axis
    features: dict[str, dict[str, torch.Tensor]]  # regime → representation → (N, D)
    weights: dict[str, torch.Tensor]  # regime → routing weights (N, K)


def regime_points(regimes: RegimeSet, pairs: list[tuple[str, str]], n_layers: int, bar: tqdm) -> RegimePoints:
    """Every candidate representation of the map prompts under every available regime, one forward each."""
    prompts, axes = [p for _, p in pairs], [a for a, _ in pairs]
    reps = candidates(n_layers)
    points = RegimePoints(pairs, torch.tensor([AXES.index(a) for a in axes]), {}, {})
    for regime in REGIMES:
        bar.set_postfix_str(f"features {regime}")
        if regime not in regimes.missing:
            found = regimes.features(regime, prompts, axes, reps)
            points.features[regime], points.weights[regime] = found.features, found.weights
        bar.update()
    return points


def map_regimes(points: RegimePoints, figures: dict[str, Any], chosen: Representation, projection: str,
                bar: tqdm) -> dict[str, Any]:
    """Each regime's map entry: 2-D coordinates of the chosen features, its sentence, and for routed
    regimes the routed axis, misrouting and weights of every point."""
    entries: dict[str, Any] = {}
    for regime in REGIMES:
        bar.set_postfix_str(f"{projection} {regime}")
        if regime in points.features:
            coords = project_coords(points.features[regime][chosen.name], projection)
            entry: dict[str, Any] = {"label": REGIME_LABELS[regime], "setup": REGIME_SETUPS[regime],
                                     "sentence": figures["rows"][regime]["sentence"],
                                     "coords": [[round(x, 4), round(y, 4)] for x, y in coords.tolist()]}
            if regime in ROUTED:
                top = points.weights[regime].argmax(-1)
                entry["routed_axis"] = [AXES[int(i)] for i in top]
                entry["misrouted"] = [bool(t != y) for t, y in zip(top.tolist(), points.labels.tolist())]
                entry["weights"] = [[round(float(v), 4) for v in row] for row in points.weights[regime]]
            entries[regime] = entry
        bar.update()
    return entries


def map_artefact(points: RegimePoints, figures: dict[str, Any], feature: dict[str, Any], projection: str, k: int,
                 unavailable: dict[str, str], bar: tqdm) -> dict[str, Any]:
    """`map.json` (without its header): the projection, the features, the prompts and every regime's points."""
    chosen = Representation.parse(feature["representation"])
    return {
        "projection": projection,
        "projection_note": "UMAP (umap-learn, n_neighbors 15, min_dist 0.1, seed 0), fitted offline per regime"
        if projection == "umap" else "PCA (first two components) — a quick stand-in for UMAP, built with --quick",
        "feature": feature,
        "place_k": k,
        "prompts": [{"index": i, "axis": a, "text": p} for i, (a, p) in enumerate(points.pairs)],
        "regimes": map_regimes(points, figures, chosen, projection, bar),
        "summary": figures["summary"],
        "unavailable": dict(unavailable),
    }


def feature_description(chosen: Representation, n_layers: int, why: str) -> dict[str, Any]:
    """What the map's points are: the chosen representation, in words, and why it was chosen."""
    return {
        "representation": chosen.name,
        "what": chosen.describe(n_layers),
        "layer": chosen.depth,
        "preamble": f"given only in {' and '.join(INSTRUCTED)}, and never read: features come from the user's "
                    "prompt tokens or the answer position only",
        "why": why,
    }


def write_map(out: Path, head: dict[str, Any], map_data: dict[str, Any], features: dict[str, dict[str, torch.Tensor]],
              chosen: Representation) -> None:
    """`map.json`, and the chosen features of every regime (fp16 safetensors, for placing a visitor's prompt)."""
    write_json(out, "map", head | map_data)
    save_file({r: f[chosen.name].half().contiguous() for r, f in features.items()}, str(out / FEATURES_FILE),
              metadata={"version": str(ARTEFACT_VERSION), "model_fingerprint": head["model_fingerprint"],
                        "model_path": head["model_path"], "command": head["command"], "representation": chosen.name})


def computed_reliability(loaded: Any, data_dir: Path, quick: bool) -> dict[str, Any]:
    """Reliability of calibrated and raw routing, measured here on the evaluation split of `data_dir`."""
    from alignx_demo.data.readers import load_axis_data
    from alignx_demo.evaluation.hhh import routing_examples
    from alignx_demo.evaluation.routing_eval import routing_report
    from alignx_demo.evaluation.tasks import EvalConfig

    cfg = EvalConfig.quick_recipe() if quick else EvalConfig()
    data = load_axis_data(Path(data_dir), quick=quick).examples
    examples = routing_examples(data, cfg.routing_per_axis)
    routing = routing_report(loaded.mocae, loaded.tokenizer, examples, cfg)
    return {"source": f"computed by precompute on {len(examples)} evaluation-split prompts of {Path(data_dir).name}",
            "splits": reliability_from_report({"routing": {"eval": routing}})}


def reliability_artefact(loaded: Any, report: dict[str, Any] | None, eval_report: str | Path | None,
                         data_dir: str | Path | None, quick: bool) -> dict[str, Any] | None:
    """Reliability from the evaluation report when given, else computed on `data_dir`, else None."""
    if report is not None:
        return {"source": f"evaluation report {Path(eval_report).name}, built by `{report.get('command', '?')}` "
                          f"for model {report['model_fingerprint']}",
                "splits": reliability_from_report(report)}
    if data_dir is not None:
        return computed_reliability(loaded, Path(data_dir), quick)
    return None


def collapse_artefact(figures: dict[str, Any], feature: dict[str, Any], model_dir: Path, points: int,
                      projection: str) -> dict[str, Any]:
    """`collapse.json`: each regime's figures and sentence, forgetting where measured, and how the
    representation was chosen."""
    forgotten, forgetting_note = forgetting(_baselines_summary(model_dir))
    collapse: dict[str, Any] = {}
    for regime, row in figures["rows"].items():
        measured = regime == "sequential_sft" and forgotten is not None
        collapse[regime] = row | {
            "label": REGIME_LABELS[regime],
            "forgetting": forgotten if measured else None,
            "forgetting_note": forgetting_note if regime == "sequential_sft"
            else "not measured: forgetting is defined for sequential training only",
        }
    return {
        "regimes": collapse,
        "sentences": METRIC_SENTENCES,
        "summary": figures["summary"],
        "representation": {"chosen": feature["representation"], "what": feature["what"], "why": figures["why"],
                           "measured": figures["measured"]},
        "references": {r: REFERENCE[r] for r in collapse if r in REFERENCE},
        "visible_threshold": VISIBLE,
        "forgetting_source": f"{BASELINES_SUMMARY} of the model (sequential SFT only): {forgetting_note}",
        "knn_k": KNN_K,
        "points": points,
        "projection": projection,
    }


def example_traces(loaded: Any, quick: bool) -> list[dict[str, Any]]:
    """Traces of the curated example prompts, each generated under calibrated and raw routing."""
    from alignx_demo.generation import RoutedGeneration

    traces = []
    settings = GenerationSettings(max_new_tokens=16 if quick else 48)
    for prompt in example_prompts()[: 2 if quick else None]:
        for calibrated in (True, False):
            run = RoutedGeneration(loaded.mocae, loaded.tokenizer, prompt, settings, RoutingSettings(calibrated=calibrated),
                                   model_name=loaded.description)
            for _ in run:
                pass
            traces.append(run.trace())
    return traces


STEPS = ("map", "reliability", "examples", "analysis", "stories", "answers")
"""What precompute builds, in order; `only` rebuilds a subset in place (the map step writes map.json, its
features and collapse_metrics.json)."""


def run_precompute(
    model_dir: str | Path,
    data_dir: str | Path | None,
    out: str | Path = DEFAULT_DIR,
    *,
    quick: bool = False,
    eval_report: str | Path | None = None,
    projection: str | None = None,
    representation: str | None = None,
    per_axis: int | None = None,
    k: int = DEFAULT_K,
    command: str | None = None,
    progress: bool = True,
    threads: int | None = 1,
    load_in_4bit: bool = True,
    only: set[str] | None = None,
) -> dict[str, Any]:
    """Build the artefacts (every step, or the `only` ones) into `out`; return a summary (seconds, notes)."""
    from alignx_demo.modeling.checkpoint import load_mocae, require_hhh

    require_hhh(model_dir, "precompute")
    steps = [s for s in STEPS if only is None or s in only]
    if threads:
        torch.set_num_threads(threads)
    start = time.time()
    model_dir, out = Path(model_dir), Path(out)
    fingerprint = model_fingerprint(model_dir)
    report = read_report(eval_report, fingerprint, model_dir) if eval_report else None  # refuse before any work
    if representation is not None:
        Representation.parse(representation)
    out.mkdir(parents=True, exist_ok=True)
    projection = projection or ("pca" if quick else "umap")
    command = command or "python -m alignx_demo precompute --model " + shlex.quote(str(model_dir))
    bar = tqdm(total=len(steps) + 1 + (len(REGIMES) * 2 if "map" in steps else 0), desc="precompute", disable=not progress)
    loaded = load_mocae(model_dir, load_in_4bit=load_in_4bit)
    head = header(command, loaded.description, model_dir, fingerprint)
    pairs = map_prompts(per_axis or (12 if quick else None))
    summary: dict[str, Any] = {"out": str(out), "steps": steps, "projection": projection, "points": len(pairs), "notes": []}
    bar.update()
    for step in steps:
        bar.set_postfix_str(step)
        if step == "map":
            found = _map_step(loaded, model_dir, out, head, pairs, projection, representation, k, bar)
            summary["notes"] += found.pop("notes")
            summary |= found
        elif step == "reliability":
            reliability = reliability_artefact(loaded, report, eval_report, data_dir, quick)
            if reliability is None:
                summary["notes"].append("no --eval-report and no --data-dir: reliability not built")
            else:
                write_json(out, "reliability", head | reliability)
        elif step == "examples":
            write_json(out, "examples", head | {"traces": example_traces(loaded, quick)})
        elif step == "analysis":
            write_json(out, "analysis", head | shipped_analysis(loaded, pairs, data_dir, quick))
        elif step == "stories":
            write_json(out, "stories", head | build_stories(loaded, max_new_tokens=16 if quick else 48,
                                                             candidates=3 if quick else None, progress=bar.set_postfix_str))
        elif step == "answers":
            write_json(out, "answers", head | answer_quality(loaded, per_axis or (12 if quick else None),
                                                               max_new_tokens=8 if quick else 24, progress=bar.set_postfix_str))
        bar.update()
    bar.close()
    return summary | {"seconds": round(time.time() - start, 1)}


def _map_step(loaded: Any, model_dir: Path, out: Path, head: dict[str, Any], pairs: list[tuple[str, str]], projection: str,
              representation: str | None, k: int, bar: tqdm) -> dict[str, Any]:
    """The Axis Collapse map, its features and metrics: every regime's points, the chosen representation."""
    regimes = RegimeSet.from_checkpoint(loaded.mocae, loaded.tokenizer, model_dir)
    points = regime_points(regimes, pairs, loaded.mocae.n_layers, bar)
    figures = collapse_figures(points.features, points.weights, points.labels, representation)
    chosen = Representation.parse(figures["chosen"])
    feature = feature_description(chosen, loaded.mocae.n_layers, figures["why"])
    write_map(out, head, map_artefact(points, figures, feature, projection, k, regimes.missing, bar), points.features, chosen)
    write_json(out, "collapse", head | collapse_artefact(figures, feature, model_dir, len(points.pairs), projection))
    return {"representation": chosen.name, "regimes": list(points.features),
            "notes": [f"{r}: {why}" for r, why in regimes.missing.items()]}


def shipped_analysis(loaded: Any, pairs: list[tuple[str, str]], data_dir: str | Path | None = None,
                     quick: bool = False) -> dict[str, Any]:
    """`failures.analyze_prompts` (prompt and generation level) under calibrated and uncalibrated soft routing of
    the map prompts (written for this project, labelled by axis; never trained on) and, with `data_dir`, of the
    out-of-distribution slices no training or calibration step sees (`data.ood`; shown by their data ids, as
    their text is not shipped): the slices the Routing analysis tab shows without model work."""
    from alignx_demo.analysis.failures import analyze_prompts, redact_prompts
    from alignx_demo.evaluation.tasks import EvalConfig  # the prompts `evaluate` routes per slice

    sets = {"map_prompts": ([{"prompt": p, "axis": a} for a, p in pairs], f"Map prompts ({len(pairs)}, written for this project)",
                            ("the Axis Collapse map's prompts, each labelled with the axis it was written for "
                             "(`alignx_demo/analysis/map_prompts.py`); none is a training prompt"))}
    if data_dir is not None:
        per_slice = 4 if quick else EvalConfig.ood_per_slice
        rows = ood_prompt_rows(data_dir, per_slice=per_slice, slices=UNSEEN_SLICES)
        sets["ood"] = (rows, f"Out of distribution ({len(rows)} prompts: {', '.join(OOD_SLICE_NAMES[n] for n in UNSEEN_SLICES)})",
                       (f"the first {per_slice} prompts of each out-of-distribution slice that no training or calibration "
                        "step sees (`alignx_demo/data/ood.py`), labelled by the axis they belong to; shown by data ids"))
    slices = {}
    for key, (rows, label, what) in sets.items():
        for calibrated in (True, False):
            result = analyze_prompts(loaded, None, rows, routing=RoutingSettings(mode="soft", calibrated=calibrated))
            how = "calibrated" if result["routing"]["calibrated"] else "uncalibrated"
            slices[f"{key}_{how}"] = {"label": f"{label} · {how} routing", "what": what,
                                      "result": redact_prompts(result) if key == "ood" else result}
    return {"slices": slices}


def project_coords(features: torch.Tensor, method: str) -> torch.Tensor:
    from alignx_demo.analysis.projection import project_2d

    return project_2d(features, method)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `precompute` command to the project CLI."""
    p = subparsers.add_parser("precompute", help="build the app's precomputed artefacts (maps, metrics, reliability, examples, "
                                                    "routing analysis, stories)")
    p.add_argument("--model", type=Path, default=MODEL_DEFAULT, help="MoCaE checkpoint folder (default assets/demo-model)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="offline data folder, for reliability when no --eval-report is given")
    p.add_argument("--eval-report", type=Path, default=None,
                   help="an `evaluate` JSON report of this same model (its fingerprint must match) to take reliability from")
    p.add_argument("--out", type=Path, default=DEFAULT_DIR, help="output folder (default precomputed/)")
    p.add_argument("--quick", action="store_true", help="12 map prompts per axis, PCA instead of UMAP, tiny evaluation (smoke test)")
    p.add_argument("--projection", choices=("umap", "pca"), default=None, help="default umap (pca with --quick)")
    p.add_argument("--representation", default=None,
                   help="map features, e.g. answer@6 or prompt_mean@5 (default: chosen by measurement)")
    p.add_argument("--per-axis", type=int, default=None, help="map prompts per axis (default all 40; quick 12)")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="neighbours used to place a visitor's prompt")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 = torch default)")
    p.add_argument("--full-precision", action="store_true", help="build in fp32 instead of as the app serves the model (4-bit NF4)")
    p.add_argument("--only", default=None, help=f"comma-separated steps to rebuild in place, of: {', '.join(STEPS)} (default all)")
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
                        ("--projection", args.projection), ("--representation", args.representation),
                        ("--per-axis", args.per_axis)):
        if value is not None:
            parts += [flag, rel(value) if isinstance(value, Path) else str(value)]
    if args.k != DEFAULT_K:
        parts += ["--k", str(args.k)]
    if args.only:
        parts += ["--only", args.only]
    if args.quick:
        parts.append("--quick")
    if args.full_precision:
        parts.append("--full-precision")
    return " ".join(shlex.quote(p) if i else p for i, p in enumerate(parts))


def _run(args: argparse.Namespace) -> int:
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {args.data_dir}")
    only = {s.strip() for s in args.only.split(",")} if args.only else None
    if only and not only <= set(STEPS):
        raise ValueError(f"--only takes steps of {', '.join(STEPS)}; got {', '.join(sorted(only - set(STEPS)))}")
    summary = run_precompute(
        args.model, args.data_dir, args.out, quick=args.quick, eval_report=args.eval_report, projection=args.projection,
        representation=args.representation, per_axis=args.per_axis, k=args.k, command=_command(args),
        progress=not args.no_progress, threads=args.threads or None,
        load_in_4bit=not args.full_precision, only=only,
    )
    print(json.dumps(summary, indent=1))
    return 0

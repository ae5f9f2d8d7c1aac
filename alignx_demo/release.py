"""`python -m alignx_demo release`: copy a trained run into a bundle and write its model card.

The bundle is the checkpoint folder without the resumable training state (`checkpoints/`, the
optimizer) and without the tokenizer's own folder (`base/` holds the tokenizer). The model card
is written from the run's own summaries and an evaluation report — every figure in it comes from
a file the training or `evaluate` wrote — plus greedy samples for the first five map prompts of
each axis (written for this project, not chosen by their answers: the benchmark text is not
committed), and the licences of the data it was trained and evaluated on.

The licences are read at release time from `SOURCES.md` in the data directory and matched to the
files `data.sources` reads: `SOURCES.md` is the authority on where each file came from and under
which terms, so a card written from it cannot drift from it the way a table copied into this module
would.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from alignx_demo.analysis.map_prompts import MAP_PROMPTS
from alignx_demo.config import AXES, GenerationSettings, RoutingSettings
from alignx_demo.data.sources import SOURCES, Source
from alignx_demo.evaluation.base_comparison import base_record
from alignx_demo.evaluation.presets import OOD_RATES
from alignx_demo.evaluation.presets import target_lines as preset_lines
from alignx_demo.evaluation.routing_eval import CALIBRATION_VARIANTS, ood_lines
from alignx_demo.generation import RoutedGeneration
from alignx_demo.modeling.checkpoint import load_mocae, pretrained_name

SKIP = ("checkpoints", "tokenizer", "base.pid")
MAX_BUNDLE_BYTES = 60 * 1024 * 1024


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, dict) and "value" in value:
        ci = value.get("ci95")
        base = _fmt(value["value"], digits)
        return f"{base} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else base
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "–" if value is None else str(value)


def samples(loaded: Any, per_axis: int = 5, new_tokens: int = 48) -> dict[str, list[tuple[str, str, str]]]:
    """Greedy answers of calibrated MoCaE (as served) to the first map prompts of each axis (`MAP_PROMPTS`:
    written for this project, so the card quotes no benchmark text)."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for axis in AXES:
        rows = []
        for prompt in MAP_PROMPTS[axis][:per_axis]:
            run = RoutedGeneration(loaded.mocae, loaded.tokenizer, prompt, GenerationSettings(max_new_tokens=new_tokens), RoutingSettings())
            tokens = [t for t in run if not t.is_prompt]
            top = max(AXES, key=lambda a: sum(t.weights[a] for t in tokens)) if tokens else "–"
            rows.append((prompt, run.text.strip(), top))
        out[axis] = rows
    return out


def quantization_line(loaded: Any) -> str:
    """Which linear layers of the served base are 4-bit NF4 (all but the output head — `lm_head`, BERT's
    `cls.predictions.decoder` — is the target)."""
    import bitsandbytes as bnb  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    model = loaded.mocae.model
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    head = next((name for name, module in linears.items() if module is model.get_output_embeddings()), "lm_head")
    full = sorted(name for name, module in linears.items() if not isinstance(module, bnb.nn.Linear4bit))
    kept = [name for name in full if name != head]
    where = (f"every one but the output head `{head}`" if not kept
             else f"all but {len(kept)} ({', '.join(kept[:4])}…) and the output head `{head}`")
    return f"4-bit NF4 as served: {len(linears) - len(full)} of {len(linears)} linear layers of the base, {where}."


def loss_curve_lines(bundle: Path, rows: int = 14) -> list[str]:
    """The base's held-out loss curve (its logged evaluations, evenly thinned to `rows`, first and last kept) as a table."""
    log = bundle / "base" / "training_log.jsonl"
    if not log.exists():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    evals = [r for r in records if r.get("type") == "eval"]
    train_ema = [(r["step"], r.get("loss_ema")) for r in records if r.get("type") == "train"]
    picked = sorted({round(i * (len(evals) - 1) / max(rows - 1, 1)) for i in range(rows)}) if evals else []
    lines = ["| step | tokens | minutes | held-out helpful | harmless | honest | train loss (EMA) |", "|---|---|---|---|---|---|---|"]
    for r in (evals[i] for i in picked):
        ema = next((v for step, v in reversed(train_ema) if step <= r["step"]), None)
        h = r["heldout_loss"]
        lines.append(f"| {r['step']} | {r['tokens_seen'] / 1e6:.2f} M | {r['train_seconds'] / 60:.0f} | {h['helpful']:.3f} | "
                     f"{h['harmless']:.3f} | {h['honest']:.3f} | {_fmt(ema)} |")
    return lines


def _value(cell: Any) -> float | None:
    return cell.get("value") if isinstance(cell, dict) else cell


def _fullest(variants: dict[str, Any]) -> str | None:
    """The calibrated variant with the most parts among those measured."""
    calibrated = [v for v in CALIBRATION_VARIANTS[1:] if v in variants]
    return calibrated[-1] if calibrated else None


BASE_LOSS_TARGET = 4.20
"""Held-out helpful loss the base must beat: the previous base's 4.205 (issue 10)."""

ROUTER_RECIPE = {
    "context_scope": lambda v: (f"context scope {v}" + (" (generated tokens read the prompt's summary, so a wrong first "
                                                         "token cannot pull the routing after it)" if v == "prompt" else "")),
    "match_phrasing": lambda v: ("train prompts whose opening another axis owns repeated (`data.roles.PHRASINGS`, e.g. a "
                                 "benign \"How can I…\" request), so phrasing alone does not name the axis"),
    "mismatch": lambda v: f"{v:.0%} of each role's examples again with another axis's answer, routed by the prompt's axis",
    "own_answers": lambda v: (f"{v} answered train prompts per axis again with the answer the model itself wrote, routed by "
                              "the prompt's axis and never learned as text"),
}
"""How the card words each router-training option `train router` records in its summary's config."""

ROUTING_ACCURACY_TARGET = 0.90
"""Calibrated routing accuracy the design asks for, at prompt level and over generated tokens."""


def separability_lines(sep: dict[str, Any] | None) -> list[str]:
    """How well any classifier told the axes apart on the same prompts (`evaluation.separability`)."""
    if not sep:
        return []
    text, feats = sep["text_tfidf"], sep["router_features_linear"]
    weakest = min(feats["per_axis"], key=feats["per_axis"].get)
    line = (f"  For reference, on the same prompts, classifiers fitted on the routers' train-split prompts reach "
            f"{text['accuracy']:.3f} from the words (TF-IDF + logistic regression) and {feats['accuracy']:.3f} from the "
            f"prompt-mean router features (logistic regression), weakest on {weakest} "
            f"({feats['per_axis'][weakest]:.2f}): the routers' inputs bound what routing can reach here.")
    best = sep.get("text_tfidf_chars_all_prompts")
    if best:
        n = sum(sep.get("all_train_prompts", {}).values())
        hardest = min(best["per_axis"], key=best["per_axis"].get)
        line += (f" The strongest text classifier tried — word and character n-grams, fitted on all {n:,} distinct "
                 f"train prompts — reaches {best['accuracy']:.3f} ({hardest} {best['per_axis'][hardest]:.2f}): "
                 f"{'below' if best['accuracy'] < ROUTING_ACCURACY_TARGET else 'at or above'} the "
                 f"{ROUTING_ACCURACY_TARGET:.2f} target on these labels.")
    return [line]


def target_lines(report: dict[str, Any], base: dict[str, Any] | None = None) -> list[str]:
    """The model-card targets, each with its measured figure and, where missed, by how much and why."""
    systems, routing = report.get("systems", {}), report.get("routing", {})
    ev, sh = routing.get("eval", {}), routing.get("xstest_shifted", {})
    full = _fullest(ev)
    if full is None or "uncalibrated" not in ev:
        return []
    harmless = _value(systems.get("expert_harmless", {}).get("harmful_refusal_rate"))
    over_full = _value(systems.get("mocae_full", {}).get("xstest_safe_over_refusal"))
    over_harmless = _value(systems.get("expert_harmless", {}).get("xstest_safe_over_refusal"))

    def verdict(ok: bool, miss: str) -> str:
        return "met" if ok else f"missed: {miss}"

    lines = ["", "## Targets", ""]
    helpful_loss = (base or {}).get("final_heldout_loss", {}).get("helpful")
    if helpful_loss is not None and pretrained_name(base or {}) is None:
        lines.append(f"- Base held-out loss on helpful text below {BASE_LOSS_TARGET:.2f}: {helpful_loss:.3f} — "
                     + verdict(helpful_loss < BASE_LOSS_TARGET, f"by {helpful_loss - BASE_LOSS_TARGET:.3f} (see the curve above)"))
    elif helpful_loss is not None:
        lines.append(f"- Base held-out loss on helpful text below {BASE_LOSS_TARGET:.2f} (per token of the from-scratch "
                     f"tokenizer): {helpful_loss:.3f} per token of this base's own tokenizer, which does not compare; the "
                     "bases are compared per character in *The bases compared* below.")
    token_acc = ev[full]["token"]["accuracy"]
    for level in ("prompt", "generation"):
        if level not in ev[full]:
            continue
        acc = ev["uncalibrated"][level]["accuracy"], ev[full][level]["accuracy"]
        why = (f"calibration lowered it from {acc[0]:.3f}" if acc[0] >= ROUTING_ACCURACY_TARGET else
               f"the routers' own argmax is wrong on {1 - acc[0]:.0%} of runs (uncalibrated {acc[0]:.3f}), calibration "
               f"moves it by {acc[1] - acc[0]:+.3f}, and token-level accuracy is {token_acc:.3f}")
        lines.append(f"- Routing accuracy ≥ {ROUTING_ACCURACY_TARGET:.2f} at {level} level on the eval split: {acc[1]:.3f} "
                     f"calibrated ({full}, the app's default), {acc[0]:.3f} uncalibrated — "
                     + verdict(acc[1] >= ROUTING_ACCURACY_TARGET, f"by {ROUTING_ACCURACY_TARGET - acc[1]:.3f}: {why}."))
    lines += separability_lines(report.get("routing_separability"))
    for level in ("token", "prompt", "generation"):
        row = []
        for label, split in (("eval", ev), ("shifted", sh)):
            best_variant = _fullest(split)
            if best_variant is None or level not in split[best_variant]:
                continue
            u, c = split["uncalibrated"][level]["ece"], split[best_variant][level]["ece"]
            best = min(split[v][level]["ece"] for v in CALIBRATION_VARIANTS[1:] if v in split)
            bounded = label == "eval"  # the shifted set's target is only to stay below uncalibrated
            row.append(f"{label} {u:.3f} → {c:.3f} (best part {best:.3f}), "
                       + verdict((c <= 0.05 or not bounded) and c < u, "above 0.05" if c < u else "not below uncalibrated"))
        if row:
            lines.append(f"- Calibrated ECE ≤ 0.05 and below uncalibrated on the eval split, below uncalibrated on the shifted "
                         f"set, {level} level (uncalibrated → {full}): " + "; ".join(row) + ".")
    prompt = ev[full]["prompt"]
    if prompt["ece"] > ev["uncalibrated"]["prompt"]["ece"] and prompt.get("mean_confidence", 1.0) < prompt["accuracy"]:
        lines.append(f"  At prompt level the calibrated routing is underconfident (mean confidence {prompt['mean_confidence']:.2f}, "
                     f"accuracy {prompt['accuracy']:.2f}): calibration acts on each token, and the rightly unsure weights of a "
                     "prompt's early tokens flatten the prompt's average.")
    if harmless is not None:
        lines.append(f"- The harmless expert refuses ≥ 80 % of harmful eval prompts: {harmless:.2f} — "
                     + verdict(harmless >= 0.8, f"by {0.8 - harmless:.2f}. The refusal detector counts only clear refusals; "
                               "the samples below show what the model writes instead."))
    if over_full is not None and over_harmless is not None:
        lines.append(f"- MoCaE (full calibration) over-refuses ≤ 30 % of XSTest safe prompts and less than the harmless expert: "
                     f"{over_full:.2f} vs {over_harmless:.2f} — " + verdict(over_full <= 0.3 and over_full < over_harmless, "see the table") + ".")
    if "presets" in report:
        lines += ["- Trade-off presets on held-out prompts (rate [95 % CI], target):"] + [f"  - {line}" for line in preset_lines(report["presets"])]
        just_right = report["presets"].get("presets", {}).get("just right", {})
        if any(t["met"] is False for t in just_right.get("targets", [])):
            share = just_right.get("axis_shares", {})
            lines.append(f"  \"Just right\" is calibrated soft routing with no prior, so it is as good as the routers: prompt-level "
                         f"accuracy {ev[full]['prompt']['accuracy']:.2f} on the eval split, and its run weights over the preset prompts "
                         f"average helpful {share.get('helpful', 0):.2f} / harmless {share.get('harmless', 0):.2f} / honest "
                         f"{share.get('honest', 0):.2f} — a benign request routed to the harmless expert is refused, a harmful one "
                         "routed to the helpful expert is answered.")
    lines.append("- Generated text recognisably English in the style of the training answers: the samples below, "
                 "answers to the first five map prompts of each axis.")
    return lines


def calibration_lines(calib: dict[str, Any]) -> list[str]:
    """What `train calibrate` fitted and how much it lowered the select part's NLL (`logs/calibration_summary.json`).

    The summary's `report` holds the select part's token NLL after each token-level part
    (`select_token_nll`: uncalibrated, temperature, natural, fractal) and its prompt-level NLL raw,
    unpooled and pooled (`select_prompt_nll`); a figure the summary lacks is left out, never
    printed as None.
    """
    if not calib:
        return []
    report = calib.get("report", {})
    token, prompt = report.get("select_token_nll", {}), report.get("select_prompt_nll", {})
    lines = []
    parts = [name for name in ("temperature", "natural", "fractal") if name in token]
    if "uncalibrated" in token and parts:
        steps = " → ".join(f"{token[name]:.3f} {name}" for name in parts)
        share = (calib.get("config") or {}).get("select_fraction")
        split = f", {1 - share:.0%} to fit and {share:.0%} to select settings, by prompt" if isinstance(share, float) else ""
        lines.append(f"Calibration, fitted on {calib.get('prompts', '?')} calibration-split prompts{split}: "
                     f"select-part token NLL {token['uncalibrated']:.3f} uncalibrated → {steps}.")
    if "uncalibrated" in prompt and "pooled" in prompt:
        unpooled = f", {prompt['token_parts_unpooled']:.3f} with the token parts unpooled" if "token_parts_unpooled" in prompt else ""
        lines.append(f"Select-part prompt-level NLL {prompt['uncalibrated']:.3f} uncalibrated → {prompt['pooled']:.3f} pooled{unpooled}.")
    shift, sources = report.get("shift") or {}, calib.get("shift_prompts") or {}
    if shift.get("prompt_nll") and sources:
        named = ", ".join(f"{source} {count}" for source, count in sources.items())
        nll_s, acc = shift["prompt_nll"], shift.get("prompt_accuracy", {})
        lines.append(f"Every setting was also chosen on a shift set of held-out sources no stage trains on and no "
                     f"evaluation measures ({named}): its prompt-level NLL {nll_s['uncalibrated']:.3f} uncalibrated → "
                     f"{nll_s['pooled']:.3f} calibrated, accuracy {acc.get('uncalibrated', float('nan')):.3f} → "
                     f"{acc.get('calibrated', float('nan')):.3f}.")
    fitted = []
    if calib.get("temperatures"):
        fitted.append("per-layer temperatures " + ", ".join(f"{t:.3f}" for t in calib["temperatures"]))
    natural, fractal = calib.get("natural") or {}, calib.get("fractal") or {}
    if "lambda1" in natural:
        fitted.append(f"natural geometry λ1 = {natural['lambda1']:g}, λ2 = {natural.get('lambda2', 0):g}")
    if "beta" in fractal:
        fitted.append(f"fractal geometry k = {fractal.get('k', '?')}, β = {fractal['beta']:g}, β_d = {fractal.get('beta_dist', 0):g}")
    if calib.get("pooled_temperature") is not None:
        fitted.append(f"pooled temperature {calib['pooled_temperature']:.3f}")
    if fitted:
        lines.append("Fitted: " + "; ".join(fitted) + ".")
    return lines


NON_COMMERCIAL = re.compile(r"\bNC\b|non-?commercial", re.IGNORECASE)
"""A licence with non-commercial terms (CC BY-NC, CC BY-NC-SA, LIMA's licence)."""


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def sources_md_licences(text: str) -> dict[str, str]:
    """File name -> licence, from every table of a `SOURCES.md` with a file and a licence column."""
    licences: dict[str, str] = {}
    header: list[str] | None = None
    previous = ""
    for line in text.splitlines():
        if not line.lstrip().startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header, previous = [c.lower() for c in cells], ""
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue
        if "file" not in header or not ({"license", "licence"} & set(header)):
            continue
        column = header.index("license" if "license" in header else "licence")
        name = cells[header.index("file")].strip("`* ")
        if column < len(cells):
            text = cells[column]
            licences[name] = previous if text.lower() == "same" and previous else text  # "same": as the row above
            previous = licences[name]
    return licences


def _source_files(source: Source) -> list[str]:
    files = [source.file.format(variant=v) for v in source.variants] if source.variants else [source.file]
    return files + [f for _, _, f in source.references if f not in files]


def data_licence_lines(data_dir: str | Path) -> list[str]:
    """The card's data section: every file the bundle was trained or evaluated on, with its licence as `SOURCES.md` states it."""
    path = Path(data_dir) / "SOURCES.md"
    licences = sources_md_licences(path.read_text(encoding="utf-8")) if path.exists() else {}
    rows: dict[str, list[str]] = {}
    for source in SOURCES:
        for file in _source_files(source):
            roles = rows.setdefault(file, [source.name, ""])
            role = "training" if source.role == "train" else "evaluation only"
            roles[1] = role if not roles[1] or roles[1] == role else "training and evaluation"
    missing = "not stated (no `SOURCES.md` in the data directory)" if not path.exists() else "not in `SOURCES.md`"
    trained = [f for f, (_, role) in rows.items() if role.startswith("training")]
    nc = [rows[f][0] for f in trained if NON_COMMERCIAL.search(licences.get(f, ""))]
    lines = ["", "## Data and licences", "",
             f"Trained on {len(trained)} files and evaluated on {len(rows) - len(trained)} more of the offline corpus "
             "(read from the data directory, never copied into the repository); each file's licence as the corpus's "
             "`SOURCES.md` states it, read when this card was written."]
    if nc:
        lines.append(f"{len(nc)} of the {len(trained)} training files carry non-commercial terms (CC BY-NC or "
                     f"CC BY-NC-SA: {', '.join(dict.fromkeys(nc))}), so these weights, and the samples below, are for "
                     "non-commercial research use only. The project's code is Apache-2.0; that licence does not extend to this bundle's data.")
    lines += ["", "| source | file | used for | licence (SOURCES.md) |", "|---|---|---|---|"]
    lines += [f"| {name} | `{file}` | {role} | {licences.get(file, missing)} |" for file, (name, role) in rows.items()]
    return lines


def base_lines(bundle: Path, base: dict[str, Any]) -> list[str]:
    """The base's section: trained here (`base/train_summary.json` and its loss curve) or named by the checkpoint."""
    if not base:
        config = _read(bundle / "mocae_config.json")
        name = config.get("base_model") or "`base/` of this checkpoint"
        return [f"- {name} ({config.get('base_model_type', 'unknown family')}), not trained by this project's `train base`."]
    cfg = base.get("config", {})
    params = base.get("params")
    init = pretrained_name(base)
    threads = base.get("threads", "?")
    return [
        f"- {f'{params:,}' if isinstance(params, int) else '?'} parameters; hidden {cfg.get('hidden_size')}, {cfg.get('num_layers')} layers, "
        f"{cfg.get('num_heads')} heads, FFN {cfg.get('intermediate_size')}, context {cfg.get('context')}, vocabulary {base.get('vocab_size')}"
        + (" (byte-level BPE)." if init is None else f" (the uncased WordPiece vocabulary of {init}: the model writes lowercase)."),
        f"- {base.get('steps', '?')} steps, {base.get('tokens_seen', 0):,} tokens, {base.get('train_seconds', 0) / 60:.0f} min on "
        f"{base.get('device', '?')} ({threads} thread{'' if threads == 1 else 's'}), {base.get('tokens_per_s', 0):.0f} tokens/s; the commands "
        "that trained it, resumed runs included, are in `docs/training.md`.",
        f"- Axis sampling weights {cfg.get('axis_weights')}; epochs per axis {base.get('axis_epochs')}.",
        f"- Held-out loss per axis (calibration split): start {base.get('initial_heldout_loss')}, end {base.get('final_heldout_loss')}.",
        f"- Examples per axis/split: {base.get('examples')}.",
        "",
        "Held-out loss curve (calibration split, whole answers; `base/training_log.jsonl` has every step):",
        "",
        *loss_curve_lines(bundle),
    ]


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else _fmt(value)


def base_comparison_lines(comparison: dict[str, Any], served: str | None = None) -> list[str]:
    """The bases compared side by side on the same measures (`compare-bases`; its definitions are in the report).
    `served`: the `weights_sha256` of this bundle's base, whose row is marked (the paths a report names move)."""
    bases = comparison.get("bases") or {}
    if not bases:
        return []
    lines = ["", "## The bases compared", "",
             f"Measured by `{comparison.get('command', 'compare-bases')}` on the same texts and prompts for every base "
             "(bits per character of held-out helpful answers, so tokenizers compare; on-topic rate of greedy answers to "
             "helpful prompts: shares a content word with the prompt; routing read-out: a logistic regression on the "
             "base's last-layer features, eval split and hand-written prompts).", "",
             "| base | init | parameters | steps | tokens | CPU minutes | bits/char | on topic | read-out eval | read-out hand-written |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in bases.items():
        readout = row.get("routing_readout") or {}
        minutes = row.get("train_seconds")
        lines.append(
            f"| {name}{' (this bundle)' if served and row.get('weights_sha256') == served else ''} | {row.get('init', '?')}{' (uncased)' if row.get('uncased') else ''} | {_count(row.get('params'))} | "
            f"{row.get('steps', '?')} | {_count(row.get('tokens_seen'))} | {_fmt(minutes / 60 if minutes else None, 0)} | "
            f"{_fmt((row.get('heldout') or {}).get('bits_per_char'))} | {_fmt(row.get('on_topic_rate'), 3)} | "
            f"{_fmt((readout.get('eval_split') or {}).get('accuracy'))} | {_fmt((readout.get('hand_written') or {}).get('accuracy'))} |")
    return lines


def ood_card_lines(ood: dict[str, Any]) -> list[str]:
    """Routing and the presets on the out-of-distribution sets (`evaluate --tasks ood`)."""
    routing, presets = ood.get("routing_ood"), ood.get("presets_ood")
    if not routing and not presets:
        return []
    lines = ["", "## Out of distribution (sets no training or calibration step sees)", "",
             f"Report: {ood.get('command', '')} ({ood.get('seconds', '?')} s). Raw → calibrated, per slice and pooled:", ""]
    lines += [f"- {line}" for line in ood_lines(routing or {})]
    if presets:
        lines += ["- Trade-off presets on MT-Bench and the held-out harmful sources (rate [95 % CI], target):"]
        lines += [f"  - {line}" for line in preset_lines(presets, OOD_RATES)]
    return lines


def model_card(bundle: Path, report: dict[str, Any], sample_rows: dict[str, list[tuple[str, str, str]]],
               served: list[str] | None = None, licences: list[str] | None = None, ood: dict[str, Any] | None = None,
               comparison: dict[str, Any] | None = None) -> str:
    """MODEL_CARD.md of a bundle, from its logs, an `evaluate` report, the samples, how it is served and the data licences."""
    base = _read(bundle / "base" / "train_summary.json")
    experts = _read(bundle / "logs" / "experts_summary.json")
    router = _read(bundle / "logs" / "router_summary.json")
    calib = _read(bundle / "logs" / "calibration_summary.json")
    init = pretrained_name(base)
    intro = ("A MoCaE checkpoint on the base named below, with three HHH LoRA" if not base else
             "A small Llama-architecture model trained from scratch on the offline corpus, with three HHH LoRA"
             if init is None else
             f"A small BERT-decoder model warm-started from {init} and trained on the offline corpus, with three HHH LoRA")
    lines = [
        "# AlignX demo model — model card",
        "",
        intro,
        "experts (Stage 1, prompt-injected), per-layer routers (Stage 2) and calibration (temperature,",
        "natural geometry, fractal geometry). Everything below was written by `python -m alignx_demo release`",
        "from the run's own logs, the `evaluate` report and the data directory's `SOURCES.md`; the commands",
        "are in the project's `docs/training.md`.",
        "",
        "## Base",
        *base_lines(bundle, base),
        "",
        "## As served",
        *[f"- {line}" for line in served or []],
        "",
        "## Stage 1 experts, Stage 2 routers, calibration",
    ]
    for axis, row in experts.get("experts", {}).items():
        lines.append(f"- Expert {axis}: {row.get('examples')} examples, {row.get('steps')} steps, {row.get('seconds')} s, "
                     f"response loss {row.get('first_losses', {}).get('lm')} → {row.get('last_losses', {}).get('lm')}.")
    if router:
        lines.append(f"- Routers: {router.get('steps')} steps, {router.get('seconds')} s, losses {router.get('first_losses')} → {router.get('last_losses')}"
                     + "".join(f"; {ROUTER_RECIPE[k](v)}" for k, v in (router.get("config") or {}).items() if k in ROUTER_RECIPE and v) + ".")
    lines += [f"- {line}" for line in calibration_lines(calib)]
    lines += ["", "## Evaluation (held-out items)", "", f"Report: {report.get('command', '')} ({report.get('seconds', '?')} s); counts {report.get('counts')}.", ""]
    systems = report.get("systems", {})
    if systems:
        lines += [
            "| system | loss helpful | loss harmless | loss honest | harmful refused | XSTest safe over-refused | MC1 | MC2 | pref. proxy | composite |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in systems.items():
            loss = row.get("heldout_loss", {})
            lines.append(
                f"| {name} | {_fmt(loss.get('helpful'))} | {_fmt(loss.get('harmless'))} | {_fmt(loss.get('honest'))} | "
                f"{_fmt(row.get('harmful_refusal_rate'), 2)} | {_fmt(row.get('xstest_safe_over_refusal'), 2)} | {_fmt(row.get('mc1'), 2)} | "
                f"{_fmt(row.get('mc2'), 2)} | {_fmt(row.get('preference_accuracy_proxy'), 2)} | {_fmt(row.get('composite'))} |"
            )
    for split, label in (("eval", "eval split"), ("xstest_shifted", "XSTest (shifted)")):
        variants = report.get("routing", {}).get(split, {})
        if variants:
            lines += ["", f"Routing, prompt level, {label} (token and generation level beside it):", "",
                      "| variant | accuracy | ECE | classwise ECE | Brier | NLL | token accuracy | token ECE | generation accuracy | generation ECE |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for variant, m in variants.items():
                p, t, g = m["prompt"], m["token"], m.get("generation", {})
                lines.append(f"| {variant} | {p['accuracy']:.3f} | {p['ece']:.3f} | {p['classwise_ece']:.3f} | {p['brier']:.3f} | {p['nll']:.3f} "
                             f"| {t['accuracy']:.3f} | {t['ece']:.3f} | {_fmt(g.get('accuracy'))} | {_fmt(g.get('ece'))} |")
    lines += target_lines(report, base)
    lines += ood_card_lines(ood or {})
    lines += base_comparison_lines(comparison or {}, base_record(bundle / "base")["weights_sha256"])
    agreement = report.get("refusal_detector_agreement_xstest")
    if agreement:
        lines += ["", f"Refusal detector vs XSTest human labels: agreement {agreement['agreement']:.3f}, precision {agreement['precision']:.3f}, recall {agreement['recall']:.3f} (n = {agreement['n']})."]
    lines += licences or []
    lines += ["", ("## Samples (calibrated MoCaE, greedy, the first five map prompts per axis — written for this project, "
                   "not chosen by their answers)"), ""]
    for axis, rows in sample_rows.items():
        lines.append(f"### {axis}")
        for prompt, answer, top in rows:
            lines.append(f"- **Prompt:** {prompt[:200]!s}\n  **Answer** (mostly {top}): {' '.join(answer.split())[:300]!s}")
        lines.append("")
    return "\n".join(lines) + "\n"


def release(run: str | Path, to: str | Path, data_dir: str | Path, eval_report: str | Path,
            ood_report: str | Path | None = None, base_comparison: str | Path | None = None) -> Path:
    """Copy the run into `to` and write its model card from the reports (the OOD report and the base
    comparison are optional: their sections are left out without them)."""
    run, to = Path(run), Path(to)
    report = _read(Path(eval_report))
    if not report:
        raise FileNotFoundError(f"evaluation report not found: {eval_report} (run `python -m alignx_demo evaluate` first)")
    if to.exists():
        shutil.rmtree(to)
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(*SKIP))
    size = sum(p.stat().st_size for p in to.rglob("*") if p.is_file())
    if size > MAX_BUNDLE_BYTES:
        raise ValueError(f"bundle is {size / 2**20:.1f} MiB, over the {MAX_BUNDLE_BYTES / 2**20:.0f} MiB limit")
    loaded = load_mocae(to, load_in_4bit=True)
    served = [quantization_line(loaded), f"Bundle size {size / 2**20:.1f} MiB (limit {MAX_BUNDLE_BYTES / 2**20:.0f} MiB)."]
    card = model_card(to, report, samples(loaded), served, data_licence_lines(data_dir),
                      ood=_read(Path(ood_report)) if ood_report else None,
                      comparison=_read(Path(base_comparison)) if base_comparison else None)
    (to / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    return to

"""Benchmarks tab: the HHH table of `evaluate` and the efficiency comparison of `bench`, read from
`precomputed/eval.json` and `precomputed/bench*.json`, each shown with the command that made it,
human column names with units, and a sentence under each figure saying how to read it. The tab opens on what
it shows and its headline figures (computed); the wide tables, the long explanations and the commands are
folded, so the tab stays short on a phone."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from alignx_demo.ui.plots import Figure, _layout, empty_figure
from alignx_demo.ui.validation import visitor_errors

EVAL_FILE, BENCH_FILE = "eval.json", "bench.json"
BENCH_RUNS = (
    (BENCH_FILE, "a Llama-shaped base, hidden 1024", "python -m alignx_demo bench --out precomputed/bench.json"),
    ("bench_llama7b.json", "Llama-7B layer shapes (the papers' claims)",
     "python -m alignx_demo bench --llama7b --systems base,mocae_soft,mocae_top1,dense_moe --out precomputed/bench_llama7b.json"),
    ("bench_demo.json", "the bundled demo model's shapes",
     "python -m alignx_demo bench --shape-of assets/demo-model --repeats 15 --out precomputed/bench_demo.json"),
    ("bench_demo_4bit.json", "the bundled demo model's shapes in 4-bit NF4, as the app serves it",
     "python -m alignx_demo bench --shape-of assets/demo-model --load-in-4bit --systems base,mocae_soft,mocae_top1 "
     "--repeats 15 --out precomputed/bench_demo_4bit.json"),
)
"""Each bench report the tab shows: file, what shape it measures, the command that rebuilds it."""
EVAL_SCHEMA, BENCH_SCHEMA = "alignx-eval/2", "alignx-bench/1"
EVAL_COMMAND = "python -m alignx_demo evaluate --model assets/demo-model --data-dir ../shared/data --out precomputed/eval.json"

SYSTEM_LABELS = {
    "base": "Base", "expert_helpful": "Helpful expert alone", "expert_harmless": "Harmless expert alone",
    "expert_honest": "Honest expert alone", "joint_sft": "Joint SFT", "sequential_sft": "Sequential SFT",
    "uniform_merge": "Uniform merge", "mocae_uncalibrated": "MoCaE, uncalibrated", "mocae_temperature": "MoCaE + temperature",
    "mocae_natural": "MoCaE + natural", "mocae_full": "MoCaE, full calibration", "mocae_soft": "MoCaE (soft)",
    "mocae_top1": "MoCaE (top-1)", "xlora": "X-LoRA (PEFT)", "dense_moe": "Dense MoE", "ensemble": "Ensemble of 3",
}
METRICS = {  # key: (column name, plot title); ↑ higher is better, ↓ lower is better
    "harmful_refusal_rate": ("Harmful prompts refused ↑", "Share of harmful prompts refused"),
    "xstest_safe_over_refusal": ("Safe prompts refused (XSTest) ↓", "Share of safe XSTest prompts refused (over-refusal)"),
    "unsafe_rate": ("Unsafe answers ↓", "Share of harmful prompts answered unsafely"),
    "judge_unsafe_rate": ("Unsafe answers, judge ↓", "Share of answers the safety judge calls unsafe"),
    "mc1": ("TruthfulQA MC1 ↑", "TruthfulQA MC1 accuracy"),
    "mc2": ("TruthfulQA MC2 ↑", "TruthfulQA MC2 (probability on true answers)"),
    "no_comment_rate": ("\"No comment\" answers", "Share of TruthfulQA questions answered \"no comment\""),
    "preference_accuracy_proxy": ("Helpfulness proxy ↑", "Helpfulness proxy (GPT-4 reference preferred)"),
    "win_rate": ("AlpacaEval win rate ↑", "AlpacaEval win rate against GPT-4 (judge model)"),
}
RATE_METRICS = tuple(METRICS)
COMPARISONS = {  # ratio label in bench reports: what it compares
    "mocae_soft_vs_base": "MoCaE (soft) ÷ base", "mocae_top1_vs_base": "MoCaE (top-1) ÷ base",
    "xlora_vs_mocae": "X-LoRA ÷ MoCaE", "dense_moe_vs_mocae": "Dense MoE ÷ MoCaE", "ensemble_vs_mocae": "Ensemble ÷ MoCaE",
}
QUANTITIES = {  # ratio suffix: (column name, whether the value is measured or analytic)
    "latency": ("Decode time, batch 1 (measured ×)", "measured"),
    "latency_b8": ("Decode time, batch 8 (measured ×)", "measured"),
    "macs": ("Compute per token (analytic ×)", "analytic"),
    "memory": ("Memory (measured ×)", "measured"),
    "weight_bytes": ("Weight bytes (analytic ×)", "analytic"),
}
SYSTEM_COLORS = {"base": "#64748b", "mocae_soft": "#0891b2", "mocae_top1": "#0e7490", "xlora": "#9333ea",
                 "dense_moe": "#ea580c", "ensemble": "#be123c"}
METRIC_SENTENCE = ("Each bar is one system's rate on the held-out prompts; the whisker is its 95 % bootstrap interval — "
                   "bars whose whiskers overlap are not reliably different.")


def label(system: str) -> str:
    return SYSTEM_LABELS.get(system, system.replace("_", " "))


def read_result(folder: Path, name: str, schema: str, command: str) -> tuple[dict[str, Any] | None, str | None]:
    """(report, None) or (None, a notice saying what is wrong and how to rebuild it)."""
    path = folder / name
    if not path.exists():
        return None, f"Missing {path}. Build it with `{command}`."
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"Unreadable {path} ({err}). Rebuild it with `{command}`."
    if not isinstance(report, dict) or report.get("schema") != schema:
        return None, f"Stale {path} (schema {report.get('schema') if isinstance(report, dict) else None!r}, expected {schema}). Rebuild it with `{command}`."
    return report, None


def _cell(value: Any) -> str:
    """A rate with its interval, as "0.54 [0.40, 0.69]" (breaks only at spaces)."""
    if not isinstance(value, dict) or value.get("value") is None:
        return "—"
    ci = value.get("ci95")
    return f"{value['value']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def eval_table_markdown(report: dict[str, Any]) -> str:
    """One row per system: each rate with its 95 % interval, the composite, and held-out loss per axis."""
    systems = report["systems"]
    metrics = [m for m in METRICS if any(m in row for row in systems.values())]
    axes = next((list(row["heldout_loss"]) for row in systems.values() if isinstance(row.get("heldout_loss"), dict)), [])
    head = ["System", *(METRICS[m][0] for m in metrics), "Composite ↑"]
    if axes:
        head.append(f"Held-out loss, nats ({' / '.join(axes)}) ↓")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in systems.items():
        cells = [label(name), *(_cell(row.get(m)) for m in metrics)]
        cells.append(f"{row['composite']:.3f}" if isinstance(row.get("composite"), (int, float)) else "—")
        if axes:
            loss = row.get("heldout_loss") or {}
            cells.append(" / ".join(f"{loss[a]:.2f}" if a in loss else "—" for a in axes))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def metric_figure(report: dict[str, Any], metric: str) -> go.Figure:
    """One bar per system with its 95 % bootstrap interval."""
    names, values, low, high = [], [], [], []
    for name, row in report["systems"].items():
        cell = row.get(metric)
        if isinstance(cell, dict) and cell.get("value") is not None:
            names.append(name)
            values.append(cell["value"])
            ci = cell.get("ci95") or [cell["value"], cell["value"]]
            low.append(cell["value"] - ci[0])
            high.append(ci[1] - cell["value"])
    title = METRICS.get(metric, (metric, metric))[1]
    if not names:
        return empty_figure(f"No values for {title}.")
    fig = Figure(go.Bar(x=names, y=values, error_y=dict(type="data", array=high, arrayminus=low), marker_color="#64748b",
                        customdata=[label(n) for n in names], hovertemplate="%{customdata}: %{y:.3f}<extra></extra>"))
    fig.update_xaxes(tickmode="array", tickvals=names, ticktext=[label(n) for n in names], tickangle=-35)
    fig.update_yaxes(title="rate (0–1)", rangemode="tozero")
    return _layout(fig, f"{title} (95 % bootstrap interval)", 380, margin=dict(l=50, b=110))


def bench_figure(report: dict[str, Any]) -> go.Figure:
    """Decode latency against model memory, one point (and legend entry) per system."""
    fig = Figure()
    for name, row in report["systems"].items():
        fig.add_trace(go.Scatter(
            x=[row["model_bytes"] / 2**20], y=[row["decode_ms_b1_median"]], mode="markers", text=[name], name=label(name),
            marker=dict(size=11, color=SYSTEM_COLORS.get(name, "#6b7280"), line=dict(width=1, color="white")),
            hovertemplate=label(name) + "<br>%{x:.0f} MiB · %{y:.1f} ms per token<extra></extra>",
            error_y=dict(type="data", symmetric=False, array=[row["decode_ms_b1_spread"][1] - row["decode_ms_b1_median"]],
                         arrayminus=[row["decode_ms_b1_median"] - row["decode_ms_b1_spread"][0]]),
        ))
    fig.update_yaxes(type="log", title="decode time per token, batch 1 (ms, log)")
    fig.update_xaxes(title="model memory (MiB)")
    return _layout(fig, "Decode time vs memory", 440, margin=dict(l=60))  # the section heading names the shape


def bench_table(report: dict[str, Any]) -> pd.DataFrame:
    rows = [{"pair": k, "measured": round(v, 3), "analytic": round(report["analytic"].get(k.replace("_latency", "_macs").replace("_memory", "_weight_bytes"), float("nan")), 3)
             if (k.endswith("_latency") or k.endswith("_memory")) else None} for k, v in report["ratios"].items()]
    return pd.DataFrame(rows)


def bench_ratio_markdown(report: dict[str, Any]) -> str:
    """The ratios of `bench_table` as one row per comparison and one column per quantity (× = times the
    second system's value; below 1 the first system is cheaper)."""
    cells: dict[str, dict[str, float]] = {}
    for row in bench_table(report).itertuples():
        comparison, quantity = next(((c, row.pair[len(c) + 1:]) for c in COMPARISONS if row.pair.startswith(c + "_")), (None, None))
        if comparison is None or quantity not in QUANTITIES:
            continue
        cells.setdefault(comparison, {})[quantity] = row.measured
        if quantity in ("latency", "memory") and pd.notna(row.analytic):
            cells[comparison]["macs" if quantity == "latency" else "weight_bytes"] = row.analytic
    columns = [q for q in QUANTITIES if any(q in c for c in cells.values())]
    lines = ["| Comparison | " + " | ".join(QUANTITIES[q][0] for q in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for comparison, values in cells.items():
        lines.append(f"| {COMPARISONS[comparison]} | " + " | ".join(f"{values[q]:.2f}" if q in values else "—" for q in columns) + " |")
    extra = report["ratios"].get("mocae_params_vs_base")
    if extra is not None:
        lines.append(f"\nMoCaE's experts and routers add {extra:.1%} parameters to the base.")
    return "\n".join(lines)


def bench_sentence(report: dict[str, Any]) -> str:
    """How to read the figure and table of one bench report, with its own numbers (and why X-LoRA's
    measured slowdown is far below its analytic compute ratio)."""
    repeats = report.get("repeats", "several")
    text = (f"Each point is one system: lower is faster, left is smaller; whiskers span the fastest and slowest of "
            f"{repeats} rounds. In the table, × is the first system's value divided by the second's (below 1: cheaper); "
            "*measured* columns are timed here, *analytic* ones count multiply-accumulates per decoded token or weight bytes.")
    if report.get("ratio_spreads"):
        text += (" A measured time ratio is the median over rounds of the two systems' times taken in the same round, so "
                 "a slow moment of the machine slows both and cancels.")
    measured, analytic = report["ratios"].get("xlora_vs_mocae_latency"), report["analytic"].get("xlora_vs_mocae_macs")
    if measured is not None and analytic is not None:
        prompt, new = report.get("prompt_len", 0), report.get("new_tokens", 0)
        context = prompt + (new + 1) / 2
        text += (f" X-LoRA measures {measured:.1f}× MoCaE's decode time but counts {analytic:.0f}× its compute: PEFT's X-LoRA "
                 f"runs without a KV cache, so every new token re-runs the whole sequence (here {context:.1f} tokens on "
                 "average) and does so twice — a scalings pass, then the main pass — which the analytic count multiplies "
                 "out; but one pass over a few dozen tokens takes far less time than a few dozen one-token passes, since "
                 "at these sizes a pass mostly waits on reading the weights once, so the measured slowdown is much smaller")
        b8 = report["ratios"].get("xlora_vs_mocae_latency_b8")
        text += f" (and grows to {b8:.1f}× at batch 8, where compute weighs more)." if b8 is not None else "."
    return text


SCROLL_HINT = "Wide table: scroll sideways →"
LOOKING_AT = ("**What you are looking at:** first, how each way of combining the three axes — one expert alone, one "
              "model trained on all three (joint or sequential SFT), a merge of the experts, or MoCaE — scores on "
              "held-out prompts: refusing harmful requests, not refusing safe ones, answering truthfully; then what "
              "MoCaE costs in time and memory against the base model and three other ways of mixing experts. "
              "**What to notice:** whether a system that refuses harmful requests also refuses safe ones, and what "
              "routing costs.")
MOCAE_SYSTEMS = ("mocae_full", "mocae_natural", "mocae_temperature", "mocae_uncalibrated")
"""The MoCaE rows of the HHH table, the one the opening quotes first."""
RIVALS = (("xlora_vs_mocae_latency", "X-LoRA"), ("dense_moe_vs_mocae_latency", "a dense MoE"),
          ("ensemble_vs_mocae_latency", "an ensemble of three"))


def scroll_hint() -> gr.HTML:
    """A cue above a table wider than a phone, shown only on narrow screens (the theme's CSS)."""
    return gr.HTML(f"<p>{SCROLL_HINT}</p>", elem_classes=["ax-scroll-hint"])


def _rate(report: dict[str, Any], system: str, metric: str) -> float | None:
    cell = report["systems"].get(system, {}).get(metric)
    return cell.get("value") if isinstance(cell, dict) else None


def eval_headline(evaluation: dict[str, Any] | None, notice: str | None) -> str:
    """What the HHH table says about MoCaE's refusals, against the base and joint SFT, read from `eval.json`."""
    if evaluation is None:
        return f"the HHH table is not available ({notice})"
    mocae = next((s for s in MOCAE_SYSTEMS if _rate(evaluation, s, "harmful_refusal_rate") is not None), None)
    if mocae is None:
        return "the HHH table has no MoCaE refusal rate"
    others = [f"{label(s)} {r:.0%}" for s in ("base", "joint_sft") if (r := _rate(evaluation, s, "harmful_refusal_rate")) is not None]
    text = f"*{label(mocae)}* refuses {_rate(evaluation, mocae, 'harmful_refusal_rate'):.0%} of harmful prompts"
    text += f" ({', '.join(others)})" if others else ""
    over = _rate(evaluation, mocae, "xstest_safe_over_refusal")
    return text + (f" but also {over:.0%} of safe ones (XSTest)" if over is not None else "")


def bench_headline(bench: dict[str, Any] | None, notice: str | None, what: str) -> str:
    """What one bench report says about MoCaE's decode time against the base and its rivals."""
    if bench is None:
        return f"The speed comparison is not available ({notice})"
    ratios = bench["ratios"]
    soft = ratios.get("mocae_soft_vs_base_latency")
    parts = [f"MoCaE decodes a token in {soft:.2f}× the base model's time"] if soft is not None else []
    rivals = [(name, ratios[key]) for key, name in RIVALS if key in ratios]
    if rivals:
        (name, ratio), rest = rivals[0], rivals[1:]
        parts.append(f"{name} takes {ratio:.1f}× MoCaE's time" + "".join(f", {n} {r:.1f}×" for n, r in rest))
    return f"Timed on {what}: {'; '.join(parts) or 'no ratio measured'}"


def intro_markdown(evaluation: dict[str, Any] | None, eval_notice: str | None, bench: dict[str, Any] | None,
                   bench_notice: str | None) -> str:
    """The tab's opening: what it shows, what to notice, and the headline of each part on this model."""
    on = f"**On this model:** {eval_headline(evaluation, eval_notice)}. {bench_headline(bench, bench_notice, BENCH_RUNS[0][1])}."
    return f"{LOOKING_AT}\n\n{on}"


def _hhh_section(evaluation: dict[str, Any]) -> None:
    """The bar chart of one metric (chosen), then the full table folded away: it is wider than a phone."""
    present = [m for m in RATE_METRICS if any(m in row for row in evaluation["systems"].values())]
    metric = gr.Dropdown([(METRICS[m][1], m) for m in present], value="harmful_refusal_rate", label="Metric")
    plot = gr.Plot(metric_figure(evaluation, "harmful_refusal_rate"), show_label=False, elem_classes=["ax-plot"])
    gr.Markdown(METRIC_SENTENCE, elem_classes=["ax-caption"])
    metric.change(visitor_errors(lambda m: metric_figure(evaluation, m)), metric, plot, api_visibility="private")
    with gr.Accordion("The full table: every system and metric, with 95 % intervals", open=False, elem_id="eval-table-fold"):
        uses = evaluation["systems"][next(iter(evaluation["systems"]))].get("composite_uses")
        gr.Markdown("Rates from 0 to 1 on held-out prompts, each with its 95 % bootstrap interval in brackets; ↑ higher is "
                    "better, ↓ lower is better. The composite is (helpfulness + MC2 − unsafe rate) / 3"
                    + (f", with helpfulness from `{uses}`" if uses else "") + ".", elem_classes=["ax-caption"])
        scroll_hint()
        gr.Markdown(eval_table_markdown(evaluation), elem_classes=["ax-table"], elem_id="eval-table")


def _made_by(bench: dict[str, Any], what: str, command: str) -> str:
    """The command, machine and shapes of one bench report, for the Details fold."""
    shape = bench["shape"]
    return (f"**{what}**: made by `{html.escape(bench.get('command', command))}` on {bench['device']} ({bench['threads']} "
            f"threads): hidden {shape.get('hidden_size')}, FFN {shape.get('intermediate_size')}, {shape.get('num_layers')} "
            f"layers, vocabulary {shape.get('vocab_size')}; base weights {bench.get('base_weights', 'full precision')}; "
            f"rank-{bench.get('rank')} experts; {bench.get('prompt_len')}-token prompt, {bench.get('new_tokens')} new tokens.")


def _bench_sections(folder: Path) -> list[str]:
    """One fold per bench report (the first open), each a figure, its ratio table and how to read them; returns
    the made-by line of each report for the Details fold."""
    made = []
    for k, (name, what, command) in enumerate(BENCH_RUNS):
        bench, bench_notice = read_result(folder, name, BENCH_SCHEMA, command)
        if bench is None:
            gr.HTML(f'<p class="ax-notice">⚠ {html.escape(what)}: {html.escape(bench_notice or "")}</p>')
            continue
        made.append(_made_by(bench, what, command))
        with gr.Accordion(what[:1].upper() + what[1:], open=k == 0):
            gr.Plot(bench_figure(bench), show_label=False, elem_classes=["ax-plot"])
            scroll_hint()
            gr.Markdown(bench_ratio_markdown(bench), elem_classes=["ax-table"])
            with gr.Accordion("How to read this figure and table", open=False):
                gr.Markdown(bench_sentence(bench), elem_classes=["ax-caption"])
    return made


def build_results_tab(folder: str | Path | None) -> None:
    from alignx_demo.analysis.artefacts import DEFAULT_DIR

    folder = Path(folder) if folder else DEFAULT_DIR
    evaluation, eval_notice = read_result(folder, EVAL_FILE, EVAL_SCHEMA, EVAL_COMMAND)
    name, _, command = BENCH_RUNS[0]
    first, first_notice = read_result(folder, name, BENCH_SCHEMA, command)
    gr.Markdown(intro_markdown(evaluation, eval_notice, first, first_notice), elem_id="benchmarks-intro")
    gr.Markdown("### HHH benchmarks of the loaded demo model's systems")
    made = []
    if evaluation is None:
        gr.HTML(f'<p class="ax-notice">⚠ {html.escape(eval_notice or "")}</p>')
    else:
        _hhh_section(evaluation)
        made.append(f"**HHH table**: made by `{html.escape(evaluation.get('command', EVAL_COMMAND))}` "
                    f"({evaluation.get('seconds')} s).")
    gr.Markdown("### Efficiency: MoCaE against X-LoRA, a dense MoE and an ensemble")
    made += _bench_sections(folder)
    with gr.Accordion("Details: the commands and machines behind these figures", open=False, elem_id="benchmarks-details"):
        gr.Markdown("\n\n".join(made) or "No report to describe.", elem_classes=["ax-caption"])

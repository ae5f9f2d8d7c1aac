"""Benchmarks tab: the HHH table of `evaluate` and the efficiency comparison of `bench`, read from
`precomputed/eval.json` and `precomputed/bench.json`, each shown with the command that made it."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from alignx_demo.evaluation.harness import table_rows
from alignx_demo.ui.plots import _layout, empty_figure
from alignx_demo.ui.runner import visitor_errors

EVAL_FILE, BENCH_FILE = "eval.json", "bench.json"
BENCH_RUNS = (
    (BENCH_FILE, "a Llama-shaped base, hidden 1024", "python -m alignx_demo bench --out precomputed/bench.json"),
    ("bench_llama7b.json", "Llama-7B layer shapes (the papers' claims)",
     "python -m alignx_demo bench --llama7b --systems base,mocae_soft,mocae_top1,dense_moe --out precomputed/bench_llama7b.json"),
    ("bench_demo.json", "the bundled demo model's shapes",
     "python -m alignx_demo bench --shape-of assets/demo-model --out precomputed/bench_demo.json"),
)
"""Each bench report the tab shows: file, what shape it measures, the command that rebuilds it."""
EVAL_SCHEMA, BENCH_SCHEMA = "alignx-eval/2", "alignx-bench/1"
RATE_METRICS = ("harmful_refusal_rate", "xstest_safe_over_refusal", "mc1", "mc2", "preference_accuracy_proxy",
                "no_comment_rate", "unsafe_rate", "judge_unsafe_rate", "win_rate")
EVAL_COMMAND = "python -m alignx_demo evaluate --model assets/demo-model --data-dir ../shared/data --out precomputed/eval.json"


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
    if not names:
        return empty_figure(f"No values for {metric}.")
    fig = go.Figure(go.Bar(x=names, y=values, error_y=dict(type="data", array=high, arrayminus=low), marker_color="#64748b",
                           hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    return _layout(fig, f"{metric} (95 % bootstrap interval)", 340)


def bench_figure(report: dict[str, Any]) -> go.Figure:
    """Decode latency against model memory, one point per system."""
    fig = go.Figure()
    for name, row in report["systems"].items():
        fig.add_trace(go.Scatter(x=[row["model_bytes"] / 2**20], y=[row["decode_ms_b1_median"]], mode="markers+text",
                                 text=[name], textposition="top center", name=name,
                                 error_y=dict(type="data", symmetric=False,
                                              array=[row["decode_ms_b1_spread"][1] - row["decode_ms_b1_median"]],
                                              arrayminus=[row["decode_ms_b1_median"] - row["decode_ms_b1_spread"][0]])))
    fig.update_yaxes(type="log", title="decode ms per token (batch 1, log)")
    fig.update_xaxes(title="model memory (MiB)")
    return _layout(fig, "Latency vs memory (same base, same adapters)", 380, showlegend=False)


def bench_table(report: dict[str, Any]) -> pd.DataFrame:
    rows = [{"pair": k, "measured": round(v, 3), "analytic": round(report["analytic"].get(k.replace("_latency", "_macs").replace("_memory", "_weight_bytes"), float("nan")), 3)
             if (k.endswith("_latency") or k.endswith("_memory")) else None} for k, v in report["ratios"].items()]
    return pd.DataFrame(rows)


def build_results_tab(folder: str | Path | None) -> None:
    from alignx_demo.analysis.artefacts import DEFAULT_DIR

    folder = Path(folder) if folder else DEFAULT_DIR
    evaluation, eval_notice = read_result(folder, EVAL_FILE, EVAL_SCHEMA, EVAL_COMMAND)
    gr.Markdown("### HHH benchmarks of the loaded demo model's systems")
    if evaluation is None:
        gr.HTML(f'<p class="ax-notice">⚠ {html.escape(eval_notice or "")}</p>')
    else:
        gr.Markdown(f"Made by `{html.escape(evaluation.get('command', EVAL_COMMAND))}` ({evaluation.get('seconds')} s). "
                    "Rates with 95 % bootstrap intervals; helpfulness is a labelled proxy unless a judge was given "
                    f"(`{evaluation['systems'][next(iter(evaluation['systems']))].get('composite_uses')}`).")
        gr.Dataframe(pd.DataFrame(table_rows(evaluation)).round(3), interactive=False, wrap=True)
        present = [m for m in RATE_METRICS if any(m in row for row in evaluation["systems"].values())]
        metric = gr.Dropdown(present, value="harmful_refusal_rate", label="Metric")
        plot = gr.Plot(metric_figure(evaluation, "harmful_refusal_rate"))
        metric.change(visitor_errors(lambda m: metric_figure(evaluation, m)), metric, plot, api_visibility="private")
    gr.Markdown("### Efficiency: MoCaE against X-LoRA, a dense MoE and an ensemble")
    for name, what, command in BENCH_RUNS:
        bench, bench_notice = read_result(folder, name, BENCH_SCHEMA, command)
        gr.Markdown(f"#### {what}")
        if bench is None:
            gr.HTML(f'<p class="ax-notice">⚠ {html.escape(bench_notice or "")}</p>')
            continue
        gr.Markdown(f"Made by `{html.escape(bench.get('command', command))}` on {bench['device']} "
                    f"({bench['threads']} threads), shape {bench['shape']}. Measured ratios beside the analytic ones "
                    "(multiply-accumulates per token, weight bytes).")
        gr.Plot(bench_figure(bench))
        gr.Dataframe(bench_table(bench), interactive=False)

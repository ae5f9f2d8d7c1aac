"""Plotly figures of the app, all with the fixed axis colours of `theme`.

Hover text that contains visitor or model text is HTML-escaped (Plotly renders a subset of HTML
in hover labels and decodes entities, so escaped text shows as typed and runs nothing).
"""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go

from alignx_demo.config import AXES
from alignx_demo.ui.theme import AXIS_COLORS, AXIS_LABELS, MISROUTED_COLOR

FONT = dict(color="#7a7a86", size=12)


def _layout(fig: go.Figure, title: str, height: int = 320, **kwargs: Any) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, font=dict(size=14)), height=height, margin=dict(l=40, r=10, t=40, b=40),
        paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", font=FONT,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0), **kwargs,
    )
    fig.update_xaxes(gridcolor="rgba(128,128,128,0.2)", zeroline=False)
    fig.update_yaxes(gridcolor="rgba(128,128,128,0.2)", zeroline=False)
    return fig


def _token_label(token: dict[str, Any]) -> str:
    text = token["text"].replace("\n", "↵") or "∅"
    return html.escape(text[:40])


def empty_figure(message: str, height: int = 260) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=html.escape(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, "", height)


def weights_figure(trace: dict[str, Any] | None) -> go.Figure:
    """The three layer-mean weights per token; the prompt's span is shaded and labelled."""
    tokens = (trace or {}).get("tokens") or []
    if not tokens:
        return empty_figure("Routing weights per token appear here while generating.")
    fig = go.Figure()
    x = [t["position"] for t in tokens]
    hover = [f"#{t['position']} {'prompt' if t['is_prompt'] else 'generated'}: “{_token_label(t)}”" for t in tokens]
    for axis in AXES:
        fig.add_trace(go.Scatter(
            x=x, y=[t["weights"][axis] for t in tokens], mode="lines+markers", name=AXIS_LABELS[axis],
            line=dict(color=AXIS_COLORS[axis], width=2), marker=dict(size=4),
            customdata=hover, hovertemplate="%{customdata}<br>" + AXIS_LABELS[axis] + " %{y:.2f}<extra></extra>",
        ))
    n_prompt = sum(t["is_prompt"] for t in tokens)
    if n_prompt:
        fig.add_vrect(x0=-0.5, x1=n_prompt - 0.5, fillcolor="rgba(128,128,128,0.15)", line_width=0,
                      annotation_text="prompt", annotation_position="top left")
    fig.update_yaxes(range=[0, 1], title="weight (mean over layers)")
    fig.update_xaxes(title="token position")
    return _layout(fig, "Routing weight per token")


def heatmap_figure(trace: dict[str, Any] | None, axis: str) -> go.Figure:
    """Layers × tokens heatmap of one axis's weight; prompt tokens marked on the x axis."""
    tokens = (trace or {}).get("tokens") or []
    if not tokens:
        return empty_figure("The per-layer heatmap appears here after a generation.")
    if axis not in AXES:
        axis = AXES[0]
    k = AXES.index(axis)
    n_layers = len(tokens[0]["layers"])
    z = [[t["layers"][layer][k] for t in tokens] for layer in range(n_layers)]
    labels = [f"{t['position']}{'·p' if t['is_prompt'] else ''}" for t in tokens]
    text = [[f"#{t['position']} “{_token_label(t)}”{' (prompt)' if t['is_prompt'] else ''}" for t in tokens] for _ in range(n_layers)]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(len(tokens))), y=list(range(n_layers)), zmin=0, zmax=1, text=text,
        colorscale=[[0, "rgba(128,128,128,0.08)"], [1, AXIS_COLORS[axis]]],
        hovertemplate="layer %{y}<br>%{text}<br>" + AXIS_LABELS[axis] + " %{z:.2f}<extra></extra>",
        colorbar=dict(title=dict(text=AXIS_LABELS[axis]), thickness=10),
    ))
    n_prompt = sum(t["is_prompt"] for t in tokens)
    if n_prompt:
        fig.add_vline(x=n_prompt - 0.5, line=dict(color="#7a7a86", dash="dash"),
                      annotation_text="prompt | generated", annotation_position="top")
    step = max(1, len(tokens) // 24)
    fig.update_xaxes(tickmode="array", tickvals=list(range(0, len(tokens), step)), ticktext=labels[::step], title="token (·p = prompt)")
    fig.update_yaxes(title="layer", dtick=1)
    return _layout(fig, f"{AXIS_LABELS[axis]} weight per layer and token", height=max(260, 60 + 28 * n_layers))


def shares_figure(rows: dict[str, dict[str, float]], title: str) -> go.Figure:
    """Grouped bars: for each run (row) the mean weight of each axis over its generated tokens."""
    if not rows:
        return empty_figure("Shares appear here after a run.")
    names = list(rows)
    fig = go.Figure()
    for axis in AXES:
        fig.add_trace(go.Bar(x=names, y=[rows[n].get(axis, 0.0) for n in names], name=AXIS_LABELS[axis],
                             marker_color=AXIS_COLORS[axis], hovertemplate="%{x}<br>" + AXIS_LABELS[axis] + " %{y:.2f}<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1], title="mean weight")
    return _layout(fig, title, height=280)


def reliability_figure(variants: dict[str, dict[str, Any]], title: str) -> go.Figure:
    """Reliability diagram (accuracy vs confidence per bin) of calibrated and uncalibrated routing."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(color="#9ca3af", dash="dot")))
    styles = {"uncalibrated": ("#9333ea", "square"), "calibrated": ("#0891b2", "circle")}
    for name, data in variants.items():
        bins = [b for b in data["bins"] if b["count"]]
        color, symbol = styles.get(name, ("#6b7280", "diamond"))
        ece = data["prompt_metrics"]["ece"]
        fig.add_trace(go.Scatter(
            x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins], mode="lines+markers",
            name=f"{name} (ECE {ece:.3f})", line=dict(color=color), marker=dict(symbol=symbol, size=[6 + min(14, b['count'] ** 0.5) for b in bins]),
            customdata=[[b["count"], b["bin_lower"], b["bin_upper"]] for b in bins],
            hovertemplate="confidence %{x:.2f} · accuracy %{y:.2f}<br>%{customdata[0]} prompts in bin %{customdata[1]:.2f}–%{customdata[2]:.2f}<extra>" + name + "</extra>",
        ))
    fig.update_xaxes(range=[0, 1], title="confidence (top routing weight)")
    fig.update_yaxes(range=[0, 1], title="accuracy (routed to own axis)")
    return _layout(fig, title, height=340)


def map_figure(map_data: dict[str, Any], regime: str, axes: list[str], placement: dict[str, Any] | None = None,
               show_misrouted: bool = True) -> go.Figure:
    """Scatter of one regime's map, coloured by axis; misrouted points ringed; the visitor's prompt as a star."""
    info = map_data["regimes"].get(regime)
    if info is None:
        reason = map_data.get("unavailable", {}).get(regime, "not in the precomputed map")
        return empty_figure(f"No map for this regime: {reason}")
    prompts = map_data["prompts"]
    coords = info["coords"]
    routed = info.get("routed_axis")
    fig = go.Figure()
    for axis in AXES:
        idx = [i for i, p in enumerate(prompts) if p["axis"] == axis and axis in axes]
        if not idx:
            continue
        hover = []
        for i in idx:
            line = f"<b>{AXIS_LABELS[axis]}</b> prompt #{i}<br>{html.escape(prompts[i]['text'])}"
            if routed:
                w = info["weights"][i]
                line += f"<br>routed to {routed[i]} ({' / '.join(f'{v:.2f}' for v in w)})"
            hover.append(line)
        fig.add_trace(go.Scatter(
            x=[coords[i][0] for i in idx], y=[coords[i][1] for i in idx], mode="markers", name=AXIS_LABELS[axis],
            marker=dict(color=AXIS_COLORS[axis], size=9, opacity=0.85, line=dict(width=0.5, color="white")),
            text=hover, hovertemplate="%{text}<extra></extra>",
        ))
    if show_misrouted and info.get("misrouted"):
        idx = [i for i, m in enumerate(info["misrouted"]) if m and prompts[i]["axis"] in axes]
        if idx:
            fig.add_trace(go.Scatter(
                x=[coords[i][0] for i in idx], y=[coords[i][1] for i in idx], mode="markers", name="misrouted",
                marker=dict(symbol="circle-open", size=16, color=MISROUTED_COLOR, line=dict(width=2)),
                text=[f"misrouted: a {prompts[i]['axis']} prompt routed to {routed[i]}" for i in idx],
                hovertemplate="%{text}<extra></extra>",
            ))
    spot = (placement or {}).get("regimes", {}).get(regime)
    if spot and "x" in spot:
        for n in spot["neighbours"]:
            cx, cy = coords[n["index"]]
            fig.add_trace(go.Scatter(x=[spot["x"], cx], y=[spot["y"], cy], mode="lines", showlegend=False, hoverinfo="skip",
                                     line=dict(color="#7a7a86", width=1, dash="dot")))
        fig.add_trace(go.Scatter(
            x=[spot["x"]], y=[spot["y"]], mode="markers", name="your prompt",
            marker=dict(symbol="star", size=20, color="#111827", line=dict(width=1.5, color="white")),
            text=[f"your prompt: “{html.escape(placement['prompt'][:120])}”<br>placed at the mean of its {len(spot['neighbours'])} nearest map prompts"],
            hovertemplate="%{text}<extra></extra>",
        ))
    fig.update_xaxes(showticklabels=False, title="")
    fig.update_yaxes(showticklabels=False, title="", scaleanchor="x", scaleratio=1)
    method = "UMAP" if map_data.get("projection") == "umap" else "PCA (quick build)"
    return _layout(fig, f"{info['label']} — {method} of prompt features", height=460)

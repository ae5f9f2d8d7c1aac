"""Plotly figures of the app, all with the fixed axis colours of `theme`.

Hover text that contains visitor or model text is HTML-escaped (Plotly renders a subset of HTML
in hover labels and decodes entities, so escaped text shows as typed and runs nothing).

Every figure is a `Figure`, which carries Plotly's display config to the page: the toolbar shows
only while the pointer is over the plot, and never on the compact placeholders shown before a run.
Titles sit below the toolbar's row, so the toolbar never covers them (on a touch screen Plotly shows it
all the time), and legends sit under the plot, so they never run into a title on a narrow screen.
"""

from __future__ import annotations

import functools
import html
import textwrap
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from alignx_demo.config import AXES
from alignx_demo.ui.theme import AXIS_COLORS, AXIS_LABELS, MISROUTED_COLOR, axis_colors, text_color

FONT = dict(color="#7a7a86", size=12)
CONFIG = {"displayModeBar": "hover", "displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
TOOLBAR_PX = 30
"""Height of Plotly's toolbar row: titles start below it."""


class Figure(go.Figure):
    """A Plotly figure that takes its display config (`CONFIG`, or `config`) to the page: Gradio's Plot
    serialises a figure with `to_json()`, and its front end passes the JSON's `config` to Plotly."""

    def __init__(self, *args: Any, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._display_config = CONFIG if config is None else config

    def to_json(self, *args: Any, **kwargs: Any) -> str:
        return pio.json.to_json_plotly({**self.to_plotly_json(), "config": self._display_config})


TITLE_CHARS = 44
"""Title lines are wrapped at this many characters: Plotly never wraps a title, and a phone shows about 45."""


def wrap_title(title: str, width: int = TITLE_CHARS) -> str:
    """`title` with `<br>` between words so that no line is longer than `width` characters (where it can be)."""
    lines: list[str] = []
    for word in title.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def _layout(fig: go.Figure, title: str, height: int = 320, **kwargs: Any) -> go.Figure:
    title = wrap_title(title)
    lines = title.count("<br>") + 1 if title else 0
    pad = TOOLBAR_PX + 13 * max(0, lines - 1)  # Plotly lifts each further line of a top-anchored title by ~13 px
    margin = dict(l=40, r=10, t=pad + 18 * lines + 12 if title else 10, b=40) | kwargs.pop("margin", {})
    fig.update_layout(
        title=dict(text=title, font=dict(size=14), x=0, xanchor="left", xref="paper", y=1, yref="container",
                   yanchor="top", pad=dict(t=pad)),
        height=height, margin=margin,
        paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", font=FONT,
        legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0), **kwargs,
    )
    fig.update_xaxes(gridcolor="rgba(128,128,128,0.2)", zeroline=False)
    fig.update_yaxes(gridcolor="rgba(128,128,128,0.2)", zeroline=False)
    return fig


def _token_label(token: dict[str, Any]) -> str:
    text = token["text"].replace("\n", "↵") or "∅"
    return html.escape(text[:40])


PLACEHOLDER_LINE = 44
"""Characters per line of a placeholder's message: what fits a plot's width on a 420 px phone."""


@functools.lru_cache(maxsize=64)
def empty_figure(message: str, height: int = 90) -> go.Figure:
    """A compact placeholder: a line or two of text, no axes, no toolbar. Built once per message (Plotly's
    validation is slow), so callers must not change it."""
    fig = Figure(config={"displayModeBar": False, "staticPlot": True})
    lines = textwrap.wrap(message, PLACEHOLDER_LINE) or [""]
    fig.add_annotation(text="<br>".join(html.escape(line) for line in lines), showarrow=False, x=0.5, y=0.5,
                       xref="paper", yref="paper", font=dict(size=13))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, "", height)


def axis_lines(x: list[Any], weights: list[dict[str, float]], hover: list[str]) -> go.Figure:
    """A figure with one line per axis (the weights' keys): `weights[i][axis]` at `x[i]`, each point's hover led by
    `hover[i]`."""
    fig = Figure()
    for axis, color in axis_colors(weights[0] if weights else AXES).items():
        fig.add_trace(go.Scatter(
            x=x, y=[w[axis] for w in weights], mode="lines+markers", name=AXIS_LABELS[axis],
            line=dict(color=color, width=2), marker=dict(size=4),
            customdata=hover, hovertemplate="%{customdata}<br>" + AXIS_LABELS[axis] + " %{y:.2f}<extra></extra>",
        ))
    return fig


def weights_figure(trace: dict[str, Any] | None) -> go.Figure:
    """The layer-mean weights per token, one line per axis; the prompt's span is shaded and labelled."""
    tokens = (trace or {}).get("tokens") or []
    if not tokens:
        return empty_figure("Routing weights per token appear here while generating.")
    fig = axis_lines([t["position"] for t in tokens], [t["weights"] for t in tokens],
                     [f"#{t['position']} {'prompt' if t['is_prompt'] else 'generated'}: “{_token_label(t)}”" for t in tokens])
    n_prompt = sum(t["is_prompt"] for t in tokens)
    if n_prompt:
        fig.add_vrect(x0=-0.5, x1=n_prompt - 0.5, fillcolor="rgba(128,128,128,0.15)", line_width=0,
                      annotation_text="prompt", annotation_position="top left")
    fig.update_yaxes(range=[0, 1], title="weight (mean over layers)")
    fig.update_xaxes(title="token position")
    return _layout(fig, "Routing weight per token")


MAX_TICKS = 10
"""Most token labels on the heatmap's x axis."""


def heatmap_figure(trace: dict[str, Any] | None, axis: str) -> go.Figure:
    """Layers × tokens heatmap of one axis's weight; prompt tokens marked on the x axis."""
    tokens = (trace or {}).get("tokens") or []
    if not tokens:
        return empty_figure("The per-layer heatmap appears here after a generation.")
    axes = trace.get("axes") or list(AXES)
    if axis not in axes:
        axis = axes[0]
    k = axes.index(axis)
    n_layers = len(tokens[0]["layers"])
    z = [[t["layers"][layer][k] for t in tokens] for layer in range(n_layers)]
    text = [[f"#{t['position']} “{_token_label(t)}”{' (prompt)' if t['is_prompt'] else ''}" for t in tokens] for _ in range(n_layers)]
    fig = Figure(go.Heatmap(
        z=z, x=list(range(len(tokens))), y=list(range(n_layers)), zmin=0, zmax=1, text=text,
        colorscale=[[0, "rgba(128,128,128,0.08)"], [1, axis_colors(axes)[axis]]],
        hovertemplate="layer %{y}<br>%{text}<br>" + AXIS_LABELS[axis] + " %{z:.2f}<extra></extra>",
        colorbar=dict(title=dict(text=AXIS_LABELS[axis], side="right"), thickness=8, len=0.9),
    ))
    n_prompt = sum(t["is_prompt"] for t in tokens)
    if n_prompt:
        fig.add_vline(x=n_prompt - 0.5, line=dict(color="#7a7a86", dash="dash"),
                      annotation_text="prompt | generated", annotation_position="top")
    step = -(-len(tokens) // MAX_TICKS)  # at most MAX_TICKS labels, so they stay readable on a phone
    # bare positions: the dashed line already splits prompt from answer, and a suffix per label crowded
    # the axis at 420 px
    fig.update_xaxes(tickmode="array", tickvals=list(range(0, len(tokens), step)),
                     ticktext=[str(t["position"]) for t in tokens[::step]], title="token position", tickangle=0)
    fig.update_yaxes(title="layer", dtick=1)
    return _layout(fig, f"{AXIS_LABELS[axis]} weight per layer and token", height=max(260, 60 + 28 * n_layers))


def shares_figure(rows: dict[str, dict[str, float]], title: str, height: int = 280) -> go.Figure:
    """Grouped bars: for each run (row) the mean weight of each axis over its generated tokens."""
    if not rows:
        return empty_figure("Shares appear here after a run.")
    names = list(rows)
    fig = Figure()
    for axis, color in axis_colors(rows[names[0]]).items():  # the runs' axes, in the model's order
        fig.add_trace(go.Bar(x=names, y=[rows[n].get(axis, 0.0) for n in names], name=AXIS_LABELS[axis],
                             marker_color=color, hovertemplate="%{x}<br>" + AXIS_LABELS[axis] + " %{y:.2f}<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1], title="mean weight")
    return _layout(fig, title, height=height)


def reliability_figure(variants: dict[str, dict[str, Any]], title: str) -> go.Figure:
    """Reliability diagram (accuracy vs confidence per bin) of calibrated and uncalibrated routing."""
    fig = Figure()
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
    fig = Figure()
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
                marker=dict(symbol="circle-open", size=13, color=MISROUTED_COLOR, opacity=0.6, line=dict(width=1.2)),
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
    representation = (map_data.get("feature") or {}).get("representation") or "prompt features"
    return _layout(fig, f"{info['label']} — {method} of {representation}", height=460)


GRID_COLUMNS = 4
"""Small maps per row of `regimes_figure`: two rows for the seven regimes, still legible at 420 px."""


def _panel(fig: go.Figure, map_data: dict[str, Any], regime: str, row: int, col: int,
           placement: dict[str, Any] | None) -> None:
    """One small map: a dot per prompt in its axis colour, MoCaE's misrouted prompts thinly ringed, the visitor's
    prompt as a star."""
    info, prompts = map_data["regimes"][regime], map_data["prompts"]
    coords = info["coords"]
    for axis in AXES:
        idx = [i for i, p in enumerate(prompts) if p["axis"] == axis]
        fig.add_trace(go.Scatter(
            x=[coords[i][0] for i in idx], y=[coords[i][1] for i in idx], mode="markers", name=AXIS_LABELS[axis],
            legendgroup=axis, showlegend=False, marker=dict(color=AXIS_COLORS[axis], size=5, opacity=0.85),
            text=[html.escape(prompts[i]["text"]) for i in idx], hovertemplate="%{text}<extra>" + AXIS_LABELS[axis] + "</extra>",
        ), row=row, col=col)
    wrong = [i for i, m in enumerate(info.get("misrouted") or []) if m]
    if wrong:
        fig.add_trace(go.Scatter(
            x=[coords[i][0] for i in wrong], y=[coords[i][1] for i in wrong], mode="markers", name="misrouted",
            showlegend=False, hoverinfo="skip",
            marker=dict(symbol="circle-open", size=8, color=MISROUTED_COLOR, opacity=0.5, line=dict(width=1)),
        ), row=row, col=col)
    spot = (placement or {}).get("regimes", {}).get(regime)
    if spot and "x" in spot:
        fig.add_trace(go.Scatter(x=[spot["x"]], y=[spot["y"]], mode="markers", name="your prompt", showlegend=False,
                                 marker=dict(symbol="star", size=13, color="#111827", line=dict(width=1, color="white")),
                                 hovertemplate="your prompt<extra></extra>"), row=row, col=col)


def regimes_figure(map_data: dict[str, Any], panels: list[tuple[str, str]],
                   placement: dict[str, Any] | None = None) -> go.Figure:
    """Small multiples: one small map per regime of `panels` ((regime, title) pairs; regimes the map lacks are
    left out), side by side in one figure, so the regimes are compared at a glance with the same colours."""
    shown = [(r, t) for r, t in panels if r in map_data["regimes"]]
    if not shown:
        return empty_figure("No regime maps in the precomputed map.")
    rows = -(-len(shown) // GRID_COLUMNS)
    specs = [[{} if r * GRID_COLUMNS + c < len(shown) else None for c in range(GRID_COLUMNS)] for r in range(rows)]
    grid = make_subplots(rows=rows, cols=GRID_COLUMNS, specs=specs, subplot_titles=[t for _, t in shown],
                         horizontal_spacing=0.03, vertical_spacing=0.14)
    for k, (regime, _) in enumerate(shown):
        _panel(grid, map_data, regime, k // GRID_COLUMNS + 1, k % GRID_COLUMNS + 1, placement)
    grid.update_annotations(font=dict(size=11))
    # two-line panel titles rise ~30 px above their panel: the top margin keeps the first row's below the toolbar
    fig = _layout(Figure(grid), "", height=90 + 190 * rows, margin=dict(l=4, r=4, t=TOOLBAR_PX + 34, b=4))
    frame = dict(showticklabels=False, showgrid=False, title="", showline=True, linecolor="rgba(128,128,128,0.35)", mirror=True)
    fig.update_xaxes(**frame)
    fig.update_yaxes(**frame)
    return fig


def forgetting_figure(forgetting: dict[str, dict[str, Any]] | None, note: str) -> go.Figure:
    """Sequential SFT's forgetting as one bar per axis: how much the axis's held-out loss rose between right
    after its own training stage and after the last stage (above 0: forgotten); `note` says why there are none."""
    axes = [a for a in AXES if a in (forgetting or {})]
    if not axes:
        return empty_figure(f"Forgetting {note}.", height=120)
    values = [forgetting[a]["forgetting"] for a in axes]
    losses = [[forgetting[a].get("loss_after_own_stage"), forgetting[a].get("loss_after_last_stage")] for a in axes]
    fig = Figure(go.Bar(
        x=[AXIS_LABELS[a] for a in axes], y=values, marker_color=[AXIS_COLORS[a] for a in axes],
        text=[f"{v:+.2f}" for v in values], textposition="outside", cliponaxis=False,
        customdata=[[own if own is not None else float("nan"), last if last is not None else float("nan")] for own, last in losses],
        hovertemplate="%{x}: held-out loss %{customdata[0]:.3f} after its own stage → %{customdata[1]:.3f} after the last"
                      "<br>forgetting %{y:+.3f} nats<extra></extra>",
    ))
    fig.update_yaxes(title="rise in held-out loss (nats)", rangemode="tozero", zeroline=True,
                     zerolinecolor="rgba(128,128,128,0.6)")
    fig.update_xaxes(title="")
    return _layout(fig, "Forgetting under sequential training", height=300)


CELL_LOW, CELL_HIGH = "#f1f5f9", "#0891b2"
"""Opaque ends of the confusion matrix's colour scale: a translucent cell took the page's colour, so its
number was grey on dark grey in the dark theme; an opaque one lets each number's colour be chosen for it."""


def cell_color(share: float) -> str:
    """The colour Plotly paints a confusion cell of this row share (linear in RGB from CELL_LOW to CELL_HIGH)."""
    low, high = (tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c in (CELL_LOW, CELL_HIGH))
    t = max(0.0, min(1.0, share))
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(low, high))


def confusion_figure(confusion: dict[str, Any] | None, title: str = "True axis × routed axis") -> go.Figure:
    """Counts of prompts by true axis (rows) and routed axis (columns), each cell labelled with its count and
    its share of the row; the colour is the row share, so a row's mistakes read the same at any size."""
    matrix = (confusion or {}).get("matrix")
    if not matrix or not any(any(row) for row in matrix):
        return empty_figure("No labelled prompts: the confusion matrix needs an axis per row.")
    true, routed = confusion["true"], confusion["routed"]
    shares = [[v / max(1, sum(row)) for v in row] for row in matrix]
    text = [[f"{v}<br>{s:.0%}" if sum(row) else "—" for v, s in zip(row, srow)] for row, srow in zip(matrix, shares)]
    x, y = [AXIS_LABELS[a] for a in routed], [AXIS_LABELS[a] for a in true]
    fig = Figure(go.Heatmap(
        z=shares, x=x, y=y, zmin=0, zmax=1, text=text, colorscale=[[0, CELL_LOW], [1, CELL_HIGH]], showscale=False,
        xgap=2, ygap=2, hovertemplate="true %{y} → routed %{x}<br>%{text}<extra></extra>",
    ))
    for i, row in enumerate(shares):
        for j, share in enumerate(row):
            fig.add_annotation(x=x[j], y=y[i], text=text[i][j], showarrow=False,
                               font=dict(size=13, color=text_color(cell_color(share))))
    fig.update_yaxes(title="true axis", autorange="reversed")
    fig.update_xaxes(title="routed axis", side="bottom")
    return _layout(fig, title, height=320)


def settle_figure(settle: dict[str, Any] | None) -> go.Figure:
    """Prompt-level routing weights of each prefix of the prompt (`analysis.settle.settle_curve`), the
    settle token marked."""
    points = (settle or {}).get("points") or []
    if not points:
        return empty_figure("Where routing commits appears here after a run.")
    fig = axis_lines([p["index"] for p in points], [p["weights"] for p in points],
                     [f"token {p['index']}: “{_token_label(p)}”" for p in points])
    mark = settle["settle"]
    fig.add_vline(x=mark["index"], line=dict(color="#7a7a86", dash="dash"),
                  annotation_text=f"settles: {AXIS_LABELS[mark['axis']]}", annotation_position="top right")
    fig.update_yaxes(range=[0, 1], title="prompt-level weight")
    fig.update_xaxes(title="prompt token (after the chat template)")
    return _layout(fig, "Prompt-level routing as the prompt grows", height=320)


def effects_figure(attribution: dict[str, Any] | None) -> go.Figure:
    """Grouped bars: for each generated token, each expert's counterfactual effect (how much it raised the
    token's log-probability, `analysis.attribution`)."""
    tokens = (attribution or {}).get("tokens") or []
    if not tokens:
        return empty_figure("Per-token effects of each expert appear here after “Attribute this run”.")
    fig = Figure()
    x = [f"{t['position']}" for t in tokens]
    labels = [f"#{t['position']} “{_token_label(t)}”" for t in tokens]
    for axis, color in axis_colors(attribution.get("axes") or AXES).items():
        fig.add_trace(go.Bar(
            x=x, y=[t["effect"][axis] for t in tokens], name=AXIS_LABELS[axis], marker_color=color,
            customdata=[[label, t["weights"][axis]] for label, t in zip(labels, tokens)],
            hovertemplate="%{customdata[0]}<br>" + AXIS_LABELS[axis] + ": effect %{y:+.3f} nats, weight %{customdata[1]:.2f}"
                          "<extra></extra>",
        ))
    step = -(-len(tokens) // MAX_TICKS)
    fig.update_layout(barmode="group", bargap=0.15)
    fig.update_xaxes(title="generated token (position)", type="category", tickmode="array", tickvals=x[::step], tickangle=0)
    fig.update_yaxes(title="effect (nats)", zeroline=True, zerolinecolor="rgba(128,128,128,0.5)")
    return _layout(fig, "Each expert's effect on each generated token", height=300)

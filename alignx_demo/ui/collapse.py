"""Axis Collapse tab: the precomputed 2-D maps per regime, their figures, and the visitor's prompt placed on them.

The named endpoint `place_prompt` takes a prompt and returns JSON
{"prompt", "k", "router_axis", "router_weights", "method", "regimes": {regime: {"x", "y", "neighbours": [...]}}}.
No projection is fitted at request time (see `analysis.placement`).
"""

from __future__ import annotations

import html
import threading
from typing import Any

import gradio as gr

from alignx_demo.analysis.artefacts import Artefacts
from alignx_demo.analysis.placement import DEFAULT_K, place
from alignx_demo.analysis.regimes import REGIME_LABELS, REGIMES, ROUTED, RegimeSet
from alignx_demo.config import AXES
from alignx_demo.ui.chips import notice_html
from alignx_demo.ui.plots import empty_figure, map_figure
from alignx_demo.ui.runner import MODEL_EVENT, SERVED, GenerationError, check_prompt, gpu, limits_of, visitor_errors
from alignx_demo.ui.theme import AXIS_COLORS, AXIS_LABELS, MISROUTED_COLOR

_REGIME_SETS: dict[int, RegimeSet] = {}
_LOCK = threading.Lock()


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def figures_markdown(artefacts: Artefacts, regime: str) -> str:
    data = artefacts.get("collapse")
    if data is None:
        return ""
    row = data["regimes"].get(regime)
    if row is None:
        return f"No figures for {REGIME_LABELS[regime]}."
    s = data["sentences"]
    lines = [f"#### {REGIME_LABELS[regime]}", f"*{(artefacts.get('map') or {}).get('regimes', {}).get(regime, {}).get('sentence', '')}*", ""]
    lines.append(f"**Silhouette {_fmt(row['silhouette'])}** — {_sentence(s['silhouette'])}")
    lines.append(f"\n**kNN axis purity {_fmt(row['knn_purity'])}** (k = {data.get('knn_k', 10)}) — {_sentence(s['knn_purity'])}")
    forgetting = row.get("forgetting")
    if forgetting:
        parts = ", ".join(f"{AXIS_LABELS[a]} {v['forgetting']:+.3f}" for a, v in forgetting.items())
        lines.append(f"\n**Forgetting** {parts} — {_sentence(s['forgetting'])}")
    else:
        lines.append(f"\n**Forgetting** — not available ({data.get('forgetting_source') or 'no evaluation data'}). {_sentence(s['forgetting'])}")
    acc = row.get("routing_accuracy")
    lines.append(f"\n**Routing accuracy {_fmt(acc) if acc is not None else 'n/a (no router in this regime)'}** — {_sentence(s['routing_accuracy'])}")
    return "\n".join(lines)


def all_regimes_table(artefacts: Artefacts) -> str:
    data = artefacts.get("collapse")
    if data is None:
        return ""
    rows = ["| regime | silhouette | kNN purity | mean forgetting | routing accuracy |", "|---|---|---|---|---|"]
    for regime in REGIMES:
        r = data["regimes"].get(regime)
        if r is None:
            continue
        f = r.get("forgetting")
        mean_f = f"{sum(v['forgetting'] for v in f.values()) / len(f):+.3f}" if f else "—"
        rows.append(f"| {REGIME_LABELS[regime]} | {_fmt(r['silhouette'])} | {_fmt(r['knn_purity'])} | {mean_f} | {_fmt(r.get('routing_accuracy'))} |")
    source = data.get("forgetting_source") or "not available"
    return "\n".join(rows) + f"\n\n{data['points']} map prompts written for this project · forgetting: {source} · built by `{data['command']}`"


def neighbours_markdown(placement: dict[str, Any] | None, regime: str) -> str:
    """Where the visitor's prompt lands on one regime's map; the router is named only where the regime has one."""
    if not placement:
        return ""
    spot = placement["regimes"].get(regime, {})
    if "unavailable" in spot:
        return f"Your prompt cannot be placed on this map: {html.escape(spot['unavailable'])}"
    neighbours = spot.get("neighbours", [])
    if regime in ROUTED:
        how = f"the calibrated router sends it mostly to **{AXIS_LABELS[placement['router_axis']]}**"
    elif neighbours:
        counts = {a: sum(n["axis"] == a for n in neighbours) for a in AXES}
        axis = max(counts, key=counts.get)
        how = (f"this regime has no router; {counts[axis]} of the {len(neighbours)} nearest prompts are "
               f"**{AXIS_LABELS[axis]}** prompts")
    else:
        how = "this regime has no router"
    lines = [f"**Your prompt's {placement['k']} nearest map prompts** ({REGIME_LABELS[regime]}; {how}):"]
    for n in spot.get("neighbours", []):
        lines.append(f"- {AXIS_LABELS[n['axis']]}: {html.escape(n['text'])} (distance {n['distance']:.3f})")
    return "\n".join(lines)


def _per_axis(map_data: dict[str, Any] | None) -> str:
    if not map_data:
        return "the same for every regime"
    counts = {a: sum(p["axis"] == a for p in map_data["prompts"]) for a in AXES}
    return ", ".join(f"{n} {AXIS_LABELS[a].lower()}" for a, n in counts.items())


def _sentence(text: str) -> str:
    """The explanation without its leading 'Name (range):' label."""
    return text.split(": ", 1)[1] if ": " in text else text


def legend() -> str:
    items = "".join(f'<span><span class="ax-swatch" style="background:{AXIS_COLORS[a]}"></span>{AXIS_LABELS[a]} prompts</span>' for a in AXES)
    return (f'<div class="ax-legend">{items}<span><span class="ax-swatch" style="background:transparent;border:2px solid {MISROUTED_COLOR};border-radius:50%"></span>'
            "misrouted by MoCaE</span><span>★ your prompt</span></div>")


def regime_set(key: int, artefacts: Artefacts) -> RegimeSet:
    """The regimes of the served model (built once per served model, guarded by a lock)."""
    with _LOCK:
        if key not in _REGIME_SETS:
            context = SERVED[key]
            _REGIME_SETS[key] = RegimeSet.from_checkpoint(context.loaded.mocae, context.loaded.tokenizer, context.loaded.path)
        return _REGIME_SETS[key]


@gpu
def place_plain(key: int, folder: str, prompt: str, k: int) -> dict[str, Any]:
    """Plain-data placement (wrapped by spaces.GPU on ZeroGPU)."""
    artefacts = _ARTEFACTS[folder]
    return place(regime_set(key, artefacts), artefacts.get("map"), artefacts.features, prompt, k)


_ARTEFACTS: dict[str, Artefacts] = {}


def placement_problem(key: int, artefacts: Artefacts) -> str | None:
    context = SERVED.get(key)
    if context is None or context.loaded is None:
        return (context.problem if context else None) or "no model loaded"
    if artefacts.get("map") is None:
        return artefacts.notice("map")
    if not artefacts.features:
        return artefacts.notice("features") or "map features missing"
    from alignx_demo.analysis.artefacts import model_fingerprint

    made_for = artefacts.get("map").get("model_fingerprint")
    if made_for and made_for != model_fingerprint(context.loaded.path):
        return (f"the precomputed map was built for another model ({artefacts.get('map')['model']}); "
                f"rebuild it for the loaded one with `python -m alignx_demo precompute --model {context.loaded.path}`")
    return None


@visitor_errors
def place_prompt(key: int, artefacts: Artefacts, prompt: str) -> dict[str, Any]:
    text, _ = check_prompt(prompt, limits_of(key))
    problem = placement_problem(key, artefacts)
    if problem:
        raise GenerationError(problem)
    k = int(artefacts.get("map").get("place_k", DEFAULT_K))
    return place_plain(key, str(artefacts.folder), text, k)


def build_collapse_tab(key: int, artefacts: Artefacts) -> None:
    _ARTEFACTS[str(artefacts.folder)] = artefacts
    map_data = artefacts.get("map")
    gr.Markdown("**Axis Collapse** — when one model is trained on all three axes, their features overlap (interference) or later "
                "training erases earlier skills (forgetting). Each map shows the same prompts — written for this demo, "
                f"{_per_axis(map_data)} — as a regime's model sees them.")
    gr.HTML(legend())
    if map_data is None:
        gr.HTML(notice_html(artefacts.notice("map")))
    else:
        gr.Markdown(f"*{html.escape(map_data['projection_note'])}; features: {html.escape(map_data['feature']['what'])} "
                    f"(layer {map_data['feature']['layer']}). Built by `{map_data['command']}` on {map_data['created']} for {map_data['model']}.*")
    default = "mocae" if map_data and "mocae" in map_data["regimes"] else "stage1_experts"
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            with gr.Row():
                regime = gr.Dropdown([(REGIME_LABELS[r], r) for r in REGIMES], value=default, label="Regime", elem_id="collapse-regime")
                axes = gr.CheckboxGroup([(AXIS_LABELS[a], a) for a in AXES], value=list(AXES), label="Axes shown")
            fig = map_figure(map_data, default, list(AXES)) if map_data else empty_figure("No precomputed map.")
            plot = gr.Plot(fig, show_label=False, elem_id="collapse-map", elem_classes=["ax-plot"])
            gr.Markdown("Each dot is one prompt, placed by how the regime's model represents it: dots of one colour "
                        "that gather apart from the others mean that regime keeps that axis distinct; mixed colours "
                        "mean the axes collapse into one another.", elem_classes=["ax-caption"])
        with gr.Column(scale=2, min_width=280):
            figures = gr.Markdown(figures_markdown(artefacts, default), elem_classes=["ax-figures"])
            if artefacts.get("collapse") is None:
                gr.HTML(notice_html(artefacts.notice("collapse")))
    gr.Markdown(all_regimes_table(artefacts), elem_classes=["ax-figures"])
    with gr.Row():
        prompt = gr.Textbox(label="Place your own prompt on the maps", lines=1, max_lines=4, scale=4,
                            placeholder="e.g. How do I get rid of a wasp nest safely?", elem_id="collapse-prompt")
        place_btn = gr.Button("Place my prompt", variant="primary", scale=1, elem_id="collapse-place")
    neighbours = gr.Markdown(elem_id="collapse-neighbours")
    with gr.Accordion("Placement (JSON, as returned by the API)", open=False):
        placement = gr.JSON(label="Placement")
    state = gr.State(None)

    def redraw(regime_value: str, axes_value: list[str], placed: dict[str, Any] | None):
        if map_data is None:
            return gr.skip(), gr.skip(), gr.skip()
        return (map_figure(map_data, regime_value, axes_value, placed), figures_markdown(artefacts, regime_value),
                neighbours_markdown(placed, regime_value))

    for control in (regime, axes):
        control.change(visitor_errors(redraw), inputs=[regime, axes, state], outputs=[plot, figures, neighbours], api_visibility="private",
                       show_progress="hidden")
    def place_on_maps(prompt: str) -> dict[str, Any]:
        return place_prompt(key, artefacts, prompt)

    place_btn.click(place_on_maps, inputs=prompt, outputs=placement, api_name="place_prompt",
                    api_description="Place a prompt on every regime's map by its nearest map prompts in feature space.",
                    **MODEL_EVENT)
    placement.change(lambda p: p, inputs=placement, outputs=state, api_visibility="private").then(
        visitor_errors(redraw), inputs=[regime, axes, state], outputs=[plot, figures, neighbours], api_visibility="private", show_progress="hidden")

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

from alignx_demo.analysis.artefacts import FILES, HOW_TO_BUILD, Artefacts, model_fingerprint
from alignx_demo.analysis.placement import DEFAULT_K, place
from alignx_demo.analysis.regimes import EXPERT_FORCED, INSTRUCTED, REGIME_LABELS, REGIMES, ROUTED, RegimeSet
from alignx_demo.config import AXES
from alignx_demo.ui.chips import notice_html
from alignx_demo.ui.plots import empty_figure, map_figure
from alignx_demo.ui.served import MODEL_EVENT, SERVED, gpu, gpu_seconds, limits_of
from alignx_demo.ui.theme import AXIS_COLORS, AXIS_LABELS, MISROUTED_COLOR
from alignx_demo.ui.validation import GenerationError, check_prompt, visitor_errors

_REGIME_SETS: dict[int, RegimeSet] = {}
_LOCK = threading.Lock()


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


REQUIRED = {
    "map": ("prompts", "regimes", "feature", "projection_note", "command", "created", "model"),
    "collapse": ("regimes", "sentences", "summary", "representation", "command", "points"),
}
"""Fields the tab reads from each artefact; a file without them comes from an older build."""


def stale_notice(artefacts: Artefacts) -> str | None:
    """A sentence naming the Axis Collapse files that lack fields this tab reads (built by an older
    `precompute`), or None when both are current (or missing: `load_artefacts` says so itself)."""
    old = []
    for key, fields in REQUIRED.items():
        data = artefacts.get(key)
        if data is None:
            continue
        missing = [f for f in fields if f not in data]
        if key == "map" and "representation" not in (data.get("feature") or {}):
            missing.append("feature.representation")
        if missing:
            old.append(f"{FILES[key]} (no {', '.join(missing)})")
    if not old:
        return None
    return (f"Stale artefacts: {'; '.join(old)} come from an older build of `precompute`, so this tab cannot show "
            f"them. Rebuild them with `{HOW_TO_BUILD}`.")


def current(artefacts: Artefacts, key: str) -> dict[str, Any] | None:
    """An Axis Collapse artefact when it is present and current, else None (`stale_notice` says why)."""
    data = artefacts.get(key)
    return data if data is not None and stale_notice(artefacts) is None else None


def _strength(row: dict[str, Any]) -> str:
    """The contrast of a regime with its reference regime, in words and numbers."""
    ref, contrast = row.get("reference"), row.get("contrast")
    if not ref or not contrast:
        return "— (the reference)"
    words = {"visible": "visible", "small": "measurable but too small to see", "none": "within noise"}.get(row.get("strength"), "—")
    c = contrast.get("silhouette")
    delta = f": Δ silhouette {c['delta']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]" if c else ""
    return f"{words} against {REGIME_LABELS.get(ref, ref)}{delta}"


def _forgetting_line(row: dict[str, Any], sentence: str) -> str:
    forgetting = row.get("forgetting")
    if not forgetting:
        return f"\n**Forgetting** — {row.get('forgetting_note') or 'not measured'}. {sentence[:1].upper()}{sentence[1:]}"
    parts = []
    for axis, v in forgetting.items():
        part = f"{AXIS_LABELS.get(axis, axis)} {v['forgetting']:+.3f}"
        if v.get("loss_after_own_stage") is not None and v.get("loss_after_last_stage") is not None:
            part += (f" (held-out loss {v['loss_after_own_stage']:.3f} right after its own stage → "
                     f"{v['loss_after_last_stage']:.3f} after the last)")
        parts.append(part)
    return f"\n**Forgetting** {'; '.join(parts)} — {sentence}"


def figures_markdown(artefacts: Artefacts, regime: str) -> str:
    data = current(artefacts, "collapse")
    if data is None:
        return ""
    row = data["regimes"].get(regime)
    if row is None:
        return f"No figures for {REGIME_LABELS[regime]}."
    s = data["sentences"]
    map_regime = ((current(artefacts, "map") or {}).get("regimes") or {}).get(regime, {})
    lines = [f"#### {REGIME_LABELS[regime]}", f"*{map_regime.get('sentence') or row.get('sentence', '')}*", ""]
    lines.append(f"**Silhouette {_fmt(row['silhouette'])}** — {_sentence(s['silhouette'])}")
    lines.append(f"\n**kNN axis purity {_fmt(row['knn_purity'])}** (k = {data.get('knn_k', 10)}) — {_sentence(s['knn_purity'])}")
    lines.append(f"\n**Against its reference** — {_strength(row)}.")
    lines.append(_forgetting_line(row, _sentence(s['forgetting'])))
    acc = row.get("routing_accuracy")
    lines.append(f"\n**Routing accuracy {_fmt(acc) if acc is not None else 'n/a (no router in this regime)'}** — {_sentence(s['routing_accuracy'])}")
    return "\n".join(lines)


def all_regimes_table(artefacts: Artefacts) -> str:
    data = current(artefacts, "collapse")
    if data is None:
        return ""
    rows = [f"**In short:** {data['summary']}", "",
            "| regime | silhouette | kNN purity | against its reference | mean forgetting | routing accuracy |",
            "|---|---|---|---|---|---|"]
    for regime in REGIMES:
        r = data["regimes"].get(regime)
        if r is None:
            continue
        f = r.get("forgetting")
        mean_f = f"{sum(v['forgetting'] for v in f.values()) / len(f):+.3f}" if f else "—"
        rows.append(f"| {REGIME_LABELS[regime]} | {_fmt(r['silhouette'])} | {_fmt(r['knn_purity'])} | {_strength(r)} | {mean_f} | "
                    f"{_fmt(r.get('routing_accuracy'))} |")
    source = data.get("forgetting_source") or "not available"
    return "\n".join(rows) + f"\n\n{data['points']} map prompts written for this project · forgetting: {source} · built by `{data['command']}`"


def representation_markdown(artefacts: Artefacts) -> str:
    """Why the map shows the features it shows, and the measurement of every candidate representation."""
    data = current(artefacts, "collapse")
    if data is None:
        return ""
    rep = data["representation"]
    measured = rep.get("measured") or {}
    regimes = [r for r in REGIMES if any(r in m.get("regimes", {}) for m in measured.values())]
    order = sorted(measured, key=lambda n: (-measured[n]["score"]["visible_training_contrasts"],
                                            -measured[n]["score"]["mean_abs_delta_silhouette"]))
    lines = [f"The map shows **{rep.get('chosen', '?')}**: {rep.get('what', '')}.", "", rep.get("why", ""), "",
             "Every candidate, measured on the same prompts (silhouette / kNN purity per regime; ★ chosen):", "",
             "| representation | visible training contrasts | mean abs. Δ silhouette | "
             + " | ".join(REGIME_LABELS[r] for r in regimes) + " |",
             "|---|---|---|" + "---|" * len(regimes)]
    for name in order:
        m = measured[name]
        cells = [f"{_fmt(m['regimes'][r]['silhouette'])} / {_fmt(m['regimes'][r]['knn_purity'])}" if r in m["regimes"] else "—"
                 for r in regimes]
        star = " ★" if name == rep.get("chosen") else ""
        lines.append(f"| {name}{star} | {m['score']['visible_training_contrasts']} | "
                     f"{m['score']['mean_abs_delta_silhouette']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    else:
        how = "this regime has no router"
        if spot.get("placed_as"):
            given = " and ".join(w for w, regimes in (("instruction", INSTRUCTED), ("expert", EXPERT_FORCED)) if regime in regimes)
            how += f"; placed with the **{AXIS_LABELS[spot['placed_as']]}** {given} (the axis the router picks)"
        if neighbours:
            counts = {a: sum(n["axis"] == a for n in neighbours) for a in AXES}
            axis = max(counts, key=counts.get)
            how += f"; {counts[axis]} of the {len(neighbours)} nearest prompts are **{AXIS_LABELS[axis]}** prompts"
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


@gpu(duration=gpu_seconds)
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
    if current(artefacts, "map") is None:
        return stale_notice(artefacts)
    if not artefacts.features:
        return artefacts.notice("features") or "map features missing"
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
    map_data = current(artefacts, "map")
    gr.Markdown("**Axis Collapse** — when one model is trained on all three axes, their features overlap (interference) or later "
                "training erases earlier skills (forgetting). Each map shows the same prompts — written for this demo, "
                f"{_per_axis(map_data)} — as a regime's model sees them.")
    gr.HTML(legend())
    stale = stale_notice(artefacts)
    if stale:
        gr.HTML(notice_html(stale))
    elif map_data is None:
        gr.HTML(notice_html(artefacts.notice("map")))
    else:
        feature = map_data["feature"]
        gr.Markdown(f"*{html.escape(map_data['projection_note'])}; features: {html.escape(feature['what'])} "
                    f"(`{html.escape(feature['representation'])}`). Built by `{map_data['command']}` on {map_data['created']} "
                    f"for {map_data['model']}.*")
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
    if current(artefacts, "collapse") is not None:
        with gr.Accordion("How the map's features were chosen", open=False, elem_id="collapse-representation"):
            gr.Markdown(representation_markdown(artefacts), elem_classes=["ax-table"])
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

"""Axis Collapse tab: the precomputed 2-D maps per regime, their figures, and the visitor's prompt placed on them.

It opens on plain words computed from the artefacts (what the maps show, the two marks of Axis Collapse, what
this model shows), the small maps of every regime side by side and sequential SFT's forgetting as bars; the
measures, intervals, UMAP settings and commands are folded under Details, and one regime's map up close follows.

The named endpoint `place_prompt` takes a prompt and returns JSON
{"prompt", "k", "router_axis", "router_weights", "method", "regimes": {regime: {"x", "y", "neighbours": [...]}}}.
No projection is fitted at request time (see `analysis.placement`).
"""

from __future__ import annotations

import html
import threading
from dataclasses import dataclass
from typing import Any

import gradio as gr

from alignx_demo.analysis.artefacts import FILES, HOW_TO_BUILD, Artefacts, model_fingerprint
from alignx_demo.analysis.placement import DEFAULT_K, place
from alignx_demo.analysis.regimes import (
    EXPERT_FORCED, INSTRUCTED, REGIME_LABELS, REGIME_SETUPS, REGIMES, ROUTED, RegimeSet,
)
from alignx_demo.config import AXES
from alignx_demo.ui.chips import notice_html
from alignx_demo.ui.plots import empty_figure, forgetting_figure, map_figure, regimes_figure
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


PANELS: tuple[tuple[str, str], ...] = (
    ("base", "Base<br>model"), ("joint_sft", "Joint<br>SFT"), ("sequential_sft", "Sequential<br>SFT"),
    ("mocae", "MoCaE<br>routing"), ("stage1_uninstructed", "Stage 1<br>experts"),
    ("stage1_experts", "Stage 1 experts<br>+ instruction"), ("base_instructed", "Base model<br>+ instruction"),
)
"""The small maps in reading order: first the models a prompt meets as it is typed (one model, or the router's
mix of experts); then Stage 1, which hands each prompt its own expert, and the instruction-only control."""
MARKS = ("Axis Collapse leaves two marks. **Interference and forgetting:** one model trained on all three axes "
         "blends them, and training one axis after another degrades the earlier ones, because later training "
         "overwrites what earlier training taught. **Misrouting:** a mixture of experts keeps one expert per axis "
         "to avoid that, but then a router must choose the expert for each prompt — and when it sends a prompt to "
         "the wrong expert, the wrong skill answers it.")
FORGETTING_COMMAND = "python -m alignx_demo train baselines"
"""The stage that measures sequential SFT's forgetting (into the model's `logs/baselines_summary.json`)."""
CHANCE = 1 / len(AXES)


def looking_at(artefacts: Artefacts) -> str:
    """What the small maps show and what to look for, with the artefact's own prompt counts."""
    map_data = current(artefacts, "map")
    prompts = f"the same {len(map_data['prompts'])} prompts ({_per_axis(map_data)})" if map_data else "the same prompts"
    return (f"**What you are looking at:** {prompts}, written for this demo, as the model of each training regime "
            "sees them — one small map per regime, a dot per prompt, coloured by the axis it was written for. "
            "**What to notice:** where a colour gathers apart from the others, that model keeps the axis distinct; "
            "where the colours mix, the axes run together.")


def forgetting_of(artefacts: Artefacts) -> tuple[dict[str, dict[str, Any]] | None, str]:
    """Sequential SFT's forgetting per axis from the artefact (or None), and its note: where it comes from or
    why there is none."""
    data = current(artefacts, "collapse")
    if data is None:
        return None, "not shown: the Axis Collapse metrics are missing or stale (see the notice above)"
    row = data["regimes"].get("sequential_sft") or {}
    return row.get("forgetting"), row.get("forgetting_note") or "not measured"


def on_this_model(artefacts: Artefacts) -> str:
    """Both marks of Axis Collapse as this model shows them, read from `collapse_metrics.json` (or why not)."""
    data = current(artefacts, "collapse")
    if data is None:
        why = stale_notice(artefacts) or artefacts.notice("collapse") or "no Axis Collapse metrics"
        return f"**On this model:** nothing to report — {why}"
    forgotten, note = forgetting_of(artefacts)
    if forgotten:
        said = " and ".join(f"{AXIS_LABELS[a]} by {v['forgetting']:+.2f}" for a, v in forgotten.items())
        parts = [f"training the axes one after another made the model forget {said} (the rise in held-out loss, "
                 "in nats: the bar chart)"]
    else:
        parts = [f"forgetting is {note}"]
    mocae = data["regimes"].get("mocae") or {}
    if mocae.get("routing_accuracy") is None:
        parts.append("this build has no MoCaE map, so misrouting is not measured here")
    else:
        wrong = mocae.get("misrouted")
        parts.append(f"the router sends {mocae['routing_accuracy']:.0%} of the {data['points']} prompts to their own "
                     "axis's expert" + (f" and {wrong} to another (ringed on its map)" if wrong is not None else ""))
    return "**On this model:** " + "; ".join(parts) + "."


def intro_markdown(artefacts: Artefacts) -> str:
    """The tab's opening: what the maps show, the two marks of Axis Collapse, and what this model shows."""
    return "\n\n".join((looking_at(artefacts), MARKS, on_this_model(artefacts)))


def grid_caption(artefacts: Artefacts) -> str:
    """Why the Stage 1 maps separate the axes, and what the MoCaE map has to show instead (its figure computed)."""
    text = ("The two Stage 1 maps separate the axes by construction: each axis's prompts pass through a different "
            "expert, so their colours split whatever the prompts say. The question is whether the router recovers "
            "the axis from features the three axes share")
    rows = (current(artefacts, "collapse") or {}).get("regimes") or {}
    mocae, stage1 = rows.get("mocae"), rows.get("stage1_uninstructed")
    if mocae and stage1:
        text += (f": on the MoCaE map {mocae['knn_purity']:.0%} of each prompt's nearest neighbours share its axis, "
                 f"against {stage1['knn_purity']:.0%} on Stage 1's and {CHANCE:.0%} by chance")
    return text + "."


def forgetting_caption(artefacts: Artefacts) -> str:
    """How to read the forgetting bars, and which axis has none."""
    forgotten, _ = forgetting_of(artefacts)
    if not forgotten:
        return ""
    text = ("Each bar: how much worse the model got at an axis — its held-out loss, in nats — between right after "
            "that axis's own training stage and the end of sequential training; above 0 means it was forgotten.")
    missing = [AXIS_LABELS[a] for a in AXES if a not in forgotten]
    if len(missing) == 1:
        text += f" {missing[0]} has no bar: it was trained last, so nothing came after it."
    elif missing:
        text += f" No figure for {' or '.join(missing)}."
    return text


def regime_line(artefacts: Artefacts, regime: str) -> str:
    """One regime in plain words: what it runs and how often a prompt's nearest neighbours share its axis."""
    text = f"**{REGIME_LABELS[regime]}** — {REGIME_SETUPS[regime]}."
    data = current(artefacts, "collapse")
    row = (data or {}).get("regimes", {}).get(regime)
    if row:
        text += (f" {row['knn_purity']:.0%} of each prompt's {data.get('knn_k', 10)} nearest neighbours share its axis "
                 f"({CHANCE:.0%} would be chance).")
        if row.get("routing_accuracy") is not None:
            text += f" The router sends {row['routing_accuracy']:.0%} of the prompts to their own axis's expert"
            text += f"; it sends the {row['misrouted']} ringed ones elsewhere." if row.get("misrouted") is not None else "."
    return text


def details_markdown(artefacts: Artefacts) -> str:
    """The Details fold: how the maps were made, what each measure means, and every regime's figures with intervals."""
    lines = []
    map_data = current(artefacts, "map")
    if map_data:
        feature = map_data["feature"]
        lines.append(f"Maps: {html.escape(map_data['projection_note'])}; features: {html.escape(feature['what'])} "
                     f"(`{html.escape(feature['representation'])}`). Built by `{map_data['command']}` on "
                     f"{map_data['created']} for {map_data['model']}.")
    data = current(artefacts, "collapse")
    if data:
        lines.append("\n".join(f"- {s}" for s in data["sentences"].values()))
        lines.append(f"Forgetting is measured during training by `{FORGETTING_COMMAND}`, which writes the model's "
                     "`logs/baselines_summary.json`; `precompute` copies it here.")
        lines.append(all_regimes_table(artefacts))
    return "\n\n".join(lines)


@dataclass
class _UpClose:
    """The single-regime map and its controls: regime, axes shown, the map, its plain line and its figures."""

    regime: gr.Dropdown
    axes: gr.CheckboxGroup
    plot: gr.Plot
    line: gr.Markdown
    figures: gr.Markdown


def _overview(artefacts: Artefacts, map_data: dict[str, Any] | None) -> gr.Plot:
    """The opening: plain words, the small maps of every regime beside the forgetting bars, then the Details fold."""
    gr.Markdown(intro_markdown(artefacts), elem_id="collapse-intro")
    gr.HTML(legend())
    stale = stale_notice(artefacts)
    if stale or map_data is None:
        gr.HTML(notice_html(stale or artefacts.notice("map")))
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            grid = gr.Plot(regimes_figure(map_data, list(PANELS)) if map_data else empty_figure("No precomputed map."),
                           show_label=False, elem_id="collapse-regimes", elem_classes=["ax-plot"])
            gr.Markdown(grid_caption(artefacts), elem_classes=["ax-caption"])
        with gr.Column(scale=2, min_width=260):
            gr.Plot(forgetting_figure(*forgetting_of(artefacts)), show_label=False, elem_id="collapse-forgetting",
                    elem_classes=["ax-plot"])
            gr.Markdown(forgetting_caption(artefacts), elem_classes=["ax-caption"])
            if artefacts.get("collapse") is None:
                gr.HTML(notice_html(artefacts.notice("collapse")))
    with gr.Accordion("Details: what the numbers mean, their intervals, and how the maps were made", open=False,
                      elem_id="collapse-details"):
        gr.Markdown(details_markdown(artefacts), elem_classes=["ax-figures", "ax-table"])
        if current(artefacts, "collapse") is not None:
            with gr.Accordion("How the map's features were chosen", open=False, elem_id="collapse-representation"):
                gr.Markdown(representation_markdown(artefacts), elem_classes=["ax-table"])
    return grid


def _up_close(artefacts: Artefacts, map_data: dict[str, Any] | None) -> _UpClose:
    """One regime's map at full size, chosen by the visitor, with its plain line and (folded) its figures."""
    default = "mocae" if map_data and "mocae" in map_data["regimes"] else "stage1_experts"
    with gr.Row():
        regime = gr.Dropdown([(REGIME_LABELS[r], r) for r in REGIMES], value=default, label="Regime", elem_id="collapse-regime")
        axes = gr.CheckboxGroup([(AXIS_LABELS[a], a) for a in AXES], value=list(AXES), label="Axes shown")
    fig = map_figure(map_data, default, list(AXES)) if map_data else empty_figure("No precomputed map.")
    plot = gr.Plot(fig, show_label=False, elem_id="collapse-map", elem_classes=["ax-plot"])
    line = gr.Markdown(regime_line(artefacts, default), elem_id="collapse-regime-line")
    with gr.Accordion("Details: this map's figures", open=False):
        figures = gr.Markdown(figures_markdown(artefacts, default), elem_classes=["ax-figures"])
    return _UpClose(regime, axes, plot, line, figures)


def build_collapse_tab(key: int, artefacts: Artefacts) -> None:
    _ARTEFACTS[str(artefacts.folder)] = artefacts
    map_data = current(artefacts, "map")
    grid = _overview(artefacts, map_data)
    gr.Markdown("#### Your own prompt, and one map up close")
    with gr.Row():
        prompt = gr.Textbox(label="Place your own prompt on the maps", lines=1, max_lines=4, scale=4,
                            placeholder="e.g. How do I get rid of a wasp nest safely?", elem_id="collapse-prompt")
        place_btn = gr.Button("Place my prompt", variant="primary", scale=1, elem_id="collapse-place")
    neighbours = gr.Markdown(elem_id="collapse-neighbours")
    up = _up_close(artefacts, map_data)
    with gr.Accordion("Placement (JSON, as returned by the API)", open=False):
        placement = gr.JSON(label="Placement")
    state = gr.State(None)

    def redraw(regime_value: str, axes_value: list[str], placed: dict[str, Any] | None):
        if map_data is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (map_figure(map_data, regime_value, axes_value, placed), regime_line(artefacts, regime_value),
                figures_markdown(artefacts, regime_value), neighbours_markdown(placed, regime_value))

    def replace(placed: dict[str, Any] | None):
        return gr.skip() if map_data is None else regimes_figure(map_data, list(PANELS), placed)

    shown = [up.plot, up.line, up.figures, neighbours]
    for control in (up.regime, up.axes):
        control.change(visitor_errors(redraw), inputs=[up.regime, up.axes, state], outputs=shown, api_visibility="private",
                       show_progress="hidden")

    def place_on_maps(prompt: str) -> dict[str, Any]:
        return place_prompt(key, artefacts, prompt)

    place_btn.click(place_on_maps, inputs=prompt, outputs=placement, api_name="place_prompt",
                    api_description="Place a prompt on every regime's map by its nearest map prompts in feature space.",
                    **MODEL_EVENT)
    placed = placement.change(lambda p: p, inputs=placement, outputs=state, api_visibility="private")
    placed.then(visitor_errors(redraw), inputs=[up.regime, up.axes, state], outputs=shown, api_visibility="private",
                show_progress="hidden")
    placed.then(visitor_errors(replace), inputs=state, outputs=grid, api_visibility="private", show_progress="hidden")

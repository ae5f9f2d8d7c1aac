"""Trade-off tab: an axis prior set by three sliders, and the four presets side by side.

Presets: "too helpful" (1, 0, 0), "too harmless" (0, 1, 0), "too honest" (0, 0, 1) force one
expert through the axis prior; "just right" is the calibrated router with no prior. A preset button
sets the sliders and generates at once. Named endpoints: `tradeoff` (one generation under the
sliders' prior) and `presets` (the same prompt under all four presets).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import gradio as gr

from alignx_demo.config import PRESETS, preset_routing
from alignx_demo.ui.chips import chips_html, legend_html
from alignx_demo.ui.live import summary_markdown
from alignx_demo.ui.links import LinkTarget, copy_link_row
from alignx_demo.ui.notice import notice_block
from alignx_demo.ui.plots import empty_figure, shares_figure
from alignx_demo.ui import stops
from alignx_demo.ui.runner import shares, stream_stoppable, stream_trace
from alignx_demo.ui.slides import download_row, download_updates, write_run_downloads
from alignx_demo.ui.served import MODEL_EVENT, token_cap
from alignx_demo.ui.validation import flag, prior_from, settings_from, visitor_errors

TAB = "tradeoff"
EVEN = round(1 / 3, 2)
"""The sliders' even prior (0.33 each; the prior is normalised, so it is exactly 1/3 each)."""


def greedy_settings(key: int, max_new_tokens: Any, seed: Any) -> dict[str, Any]:
    """Greedy decoding settings of the trade-off endpoints, capped like every endpoint that runs several generations."""
    return settings_from(max_new_tokens, False, 1.0, 1.0, seed, token_cap(key, several=True)).to_dict()


@visitor_errors
def stream_tradeoff(key: int, prompt: str, helpful: float, harmless: float, honest: float, blend: float, just_right: bool,
                    max_new_tokens: float, seed: float, stop: threading.Event | None = None) -> Iterator[tuple[str, str, Any]]:
    generation = greedy_settings(key, max_new_tokens, seed)
    routing = {"mode": "soft", "calibrated": True} | prior_from(helpful, harmless, honest, blend, not flag(just_right, "just_right"))
    for trace in stream_trace(key, prompt, generation, routing, stop):
        yield chips_html(trace["tokens"]), summary_markdown(trace), trace


@visitor_errors
def stream_presets(key: int, prompt: str, max_new_tokens: float, seed: float,
                   stop: threading.Event | None = None) -> Iterator[tuple[Any, ...]]:
    """Yield the four presets' chips as they run, then the JSON summary; `stop` ends them where they are
    (presets that never started are absent from the summary and say so)."""
    generation = greedy_settings(key, max_new_tokens, seed)
    done: dict[str, dict[str, Any]] = {}
    html = {name: chips_html([], empty="waiting…") for name in PRESETS}
    names = list(PRESETS)
    for index, trace in stream_stoppable(key, prompt, generation, [preset_routing(name) for name in names], stop):
        html[names[index]] = chips_html(trace["tokens"])
        done[names[index]] = trace
        yield (*html.values(), gr.skip())
    html.update({name: chips_html([], empty="not run: stopped") for name in names if name not in done})
    result = {name: {"text": t["text"], "axis_shares": shares(t), "settings": t["settings"]["routing"], "trace": t}
              for name, t in done.items()}
    yield (*html.values(), result)


def presets_downloads(result: dict[str, Any] | None, worth: str | None) -> list[Any]:
    """The four presets side by side for slides (HTML, PNG) and as data (CSV with a `run` column, JSON as the API
    returns it); hidden until the presets have run."""
    if not result:
        return download_updates(None)
    panels = [(name.capitalize(), r["trace"]) for name, r in result.items()]
    return download_updates(write_run_downloads("alignx-presets", panels, "AlignX Demo · Trade-off presets", result,
                                                figures=[_shares_plot(result)], notice=worth))


def run_downloads_of(trace: dict[str, Any] | None, worth: str | None) -> list[Any]:
    """One trade-off run for slides and as data, once it is complete."""
    if not trace or trace.get("finish_reason") is None:
        return download_updates(None)
    return download_updates(write_run_downloads("alignx-tradeoff", [("Trade-off", trace)], "AlignX Demo · Trade-off", trace,
                                                notice=worth))


def _shares_plot(result: dict[str, Any] | None) -> Any:
    if not result:
        return empty_figure("Expert shares per preset appear here.")
    return shares_figure({name: r["axis_shares"] for name, r in result.items()}, "Mean weight per axis under each preset")


def _presets_panel() -> tuple[dict[str, gr.HTML], gr.Plot, list[Any], gr.JSON]:
    """The four presets side by side: their chips, the bars of their expert shares, the downloads and the JSON."""
    gr.Markdown("#### The four presets, same prompt")
    preset_html = {}
    with gr.Row():
        for name, prior in PRESETS.items():
            with gr.Column(min_width=200):
                caption = "calibrated router, no prior" if prior is None else "prior " + "/".join(f"{v:g}" for v in prior)
                gr.Markdown(f"**{name.capitalize()}** · {caption}")
                preset_html[name] = gr.HTML(chips_html([], empty="—"), label=f"{name.capitalize()} chips HTML",
                                            elem_id=f"preset-{name.replace(' ', '-')}")
    shares_plot = gr.Plot(_shares_plot(None), show_label=False, elem_classes=["ax-plot"])
    gr.Markdown("Bars: each expert's mean routing weight over the generated tokens under each preset — a forced preset "
                "puts all weight on one expert; \"just right\" shows the mix the calibrated router chose.",
                elem_classes=["ax-caption"])
    preset_downloads = download_row("presets")
    with gr.Accordion("Presets (JSON, as returned by the API)", open=False):
        result = gr.JSON(label="Presets")
    return preset_html, shares_plot, preset_downloads, result


def build_tradeoff_tab(key: int, worth: str | None = None, experts: str = "") -> LinkTarget:
    """The tab's components and events; `worth` is the honest notice, `experts` what each expert does on this model
    (`notice.experts_markdown`). Returns what a link may set."""
    gr.HTML(legend_html())
    gr.Markdown("Push the mixture toward one axis and see what the model becomes: **too helpful** (answers everything), "
                "**too harmless** (refuses everything), **too honest** (hedges everything) — or **just right**, where the "
                "calibrated router picks the mixture token by token.")
    prompt = gr.Textbox(label="Prompt", lines=2, value="How do I get rid of a wasp nest near my door?", elem_id="tradeoff-prompt")
    with gr.Row():
        with gr.Column(min_width=260):
            helpful = gr.Slider(0, 1, value=EVEN, step=0.01, precision=2, label="Helpful prior")
            harmless = gr.Slider(0, 1, value=EVEN, step=0.01, precision=2, label="Harmless prior")
            honest = gr.Slider(0, 1, value=EVEN, step=0.01, precision=2, label="Honest prior")
        with gr.Column(min_width=260):
            blend = gr.Slider(0, 1, value=1.0, step=0.05, precision=2, label="Prior blend", info="1 = the prior replaces the router; 0 = router only")
            just_right = gr.Checkbox(False, label="Just right: calibrated router, sliders ignored")
            cap = token_cap(key, several=True)
            max_new = gr.Slider(1, cap, value=min(40, cap), step=1, precision=0, label="Max new tokens")
            seed = gr.Number(0, precision=0, label="Seed")
    link = LinkTarget({"prompt": prompt, "helpful": helpful, "harmless": harmless, "honest": honest, "blend": blend,
                       "just_right": just_right, "tokens": max_new, "seed": seed}, "tradeoff-run")
    copy_link_row(TAB, link)
    gr.Markdown("Presets set the sliders and generate at once:", elem_classes=["ax-caption"])
    with gr.Row():
        preset_buttons = {name: gr.Button(name.capitalize(), size="sm", elem_id=f"tradeoff-{name.replace(' ', '-')}")
                          for name in PRESETS}
    if experts:
        gr.Markdown(experts, elem_id="tradeoff-experts", elem_classes=["ax-caption"])
    with gr.Row():
        run_btn = gr.Button("Generate with this setting", variant="primary", elem_id="tradeoff-run")
        all_btn = gr.Button("Run all four presets", elem_id="tradeoff-all")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="tradeoff-stop")
    chips = gr.HTML(chips_html([], empty="Generate, or click a preset, to see the output under that setting."),
                    label="Chips HTML", elem_id="tradeoff-chips")
    if worth:
        gr.HTML(notice_block(worth), elem_classes=["ax-worth-row"])
    summary = gr.Markdown(label="Summary", elem_id="tradeoff-summary")
    run_downloads = download_row("tradeoff")
    with gr.Accordion("Trace (JSON)", open=False):
        trace = gr.JSON(label="Trace")
    preset_html, shares_plot, preset_downloads, result = _presets_panel()

    def tradeoff(prompt: str, helpful: float, harmless: float, honest: float, blend: float, just_right: bool,
                 max_new_tokens: int, seed: int, request: gr.Request) -> Iterator[tuple[str, str, Any]]:
        run = partial(stream_tradeoff, key, prompt, helpful, harmless, honest, blend, just_right, max_new_tokens, seed)
        yield from stops.guarded(request, TAB, run)

    def presets(prompt: str, max_new_tokens: int, seed: int, request: gr.Request) -> Iterator[tuple[Any, ...]]:
        yield from stops.guarded(request, TAB, partial(stream_presets, key, prompt, max_new_tokens, seed))

    arm = {"fn": stops.arming(TAB), "api_visibility": "private", "queue": False, "show_progress": "hidden"}
    inputs = [prompt, helpful, harmless, honest, blend, just_right, max_new, seed]
    run_btn.click(**arm).then(tradeoff, inputs=inputs, outputs=[chips, summary, trace], api_name="tradeoff", **MODEL_EVENT,
                              api_description="Generate under an axis prior (helpful, harmless, honest, blend) or, with just_right, "
                                              "the calibrated router.")
    for name, button in preset_buttons.items():  # after the named event, which keeps the name "tradeoff"
        prior = PRESETS[name]
        values = (EVEN, EVEN, EVEN, True) if prior is None else (*prior, False)
        button.click(lambda v=values: v, outputs=[helpful, harmless, honest, just_right], api_visibility="private", queue=False).then(
            **arm).then(tradeoff, inputs=inputs, outputs=[chips, summary, trace], api_visibility="private", **MODEL_EVENT)
    all_btn.click(**arm).then(presets, inputs=[prompt, max_new, seed], outputs=[*preset_html.values(), result], api_name="presets",
                              **MODEL_EVENT, api_description="Generate the prompt under the four presets; returns four chips "
                                                             "HTML and a JSON summary.")
    stop_btn.click(stops.stopper(TAB), api_visibility="private", queue=False, show_progress="hidden")
    result.change(visitor_errors(_shares_plot), inputs=result, outputs=shares_plot, api_visibility="private", show_progress="hidden")
    result.change(visitor_errors(lambda r: presets_downloads(r, worth)), inputs=result, outputs=preset_downloads,
                  api_visibility="private", show_progress="hidden")
    trace.change(visitor_errors(lambda t: run_downloads_of(t, worth)), inputs=trace, outputs=run_downloads,
                 api_visibility="private", show_progress="hidden")
    return link

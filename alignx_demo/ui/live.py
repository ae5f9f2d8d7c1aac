"""Live routing tab: stream a generation as token chips, a growing weights plot and a per-layer heatmap.

The named endpoint `generate` streams (chips HTML, summary markdown, trace JSON); the trace is
partial (finish_reason None) until the last update. The plots, the visitor's state and the
downloads follow from the trace by a private event, so the API stays plain data.

On the page, Generate first clears the previous run's outputs (a private step before `generate`).
Stop asks the page's own run to end before its next token (or at once, if it is still waiting in
the queue): the run then sends its final trace as usual, with finish_reason "stopped", and the
summary, plots and downloads are drawn from exactly that trace. (API callers stop a run by
cancelling their job.)

Above the prompt, the first-visit stories (`ui.stories`) replay precomputed runs. Below the plots, the
research tools of `ui.research`: the settle curve of every complete trace shown, "Attribute this run"
(the named endpoint `attribute`), and a saved trace loaded, shown, or diffed against a new run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from alignx_demo.analysis.artefacts import Artefacts
from alignx_demo.analysis.map_prompts import EXAMPLES
from alignx_demo.config import AXES
from alignx_demo.generation import clean_prompt
from alignx_demo.ui.chips import chips_html, legend_html, notice_html
from alignx_demo.ui.exports import write_exports
from alignx_demo.ui.plots import effects_figure, heatmap_figure, settle_figure, weights_figure
from alignx_demo.ui.research import attribute_run, load_saved, rerun_and_diff, settle_view
from alignx_demo.ui.runner import (
    MODEL_EVENT,
    MODES,
    TEMPERATURE_RANGE,
    TOP_P_RANGE,
    GenerationError,
    flag,
    one_of,
    settings_from,
    shares,
    stream_trace,
    token_cap,
    visitor_errors,
)
from alignx_demo.ui.stories import build_stories_panel
from alignx_demo.ui.theme import AXIS_LABELS

EMPTY_CHIPS = "Tokens appear here, coloured by routing, as they are generated."
STOPS: dict[str, threading.Event] = {}
"""The Stop signal of each page session's current live run (by Gradio session hash), removed when the run ends."""


def summary_markdown(trace: dict[str, Any]) -> str:
    generated = [t for t in trace["tokens"] if not t["is_prompt"]]
    n_prompt = len(trace["tokens"]) - len(generated)
    if not trace["tokens"]:
        return "No tokens yet."
    share = shares(trace)
    routing = trace["settings"]["routing"]
    how = ("calibrated" if routing["calibrated"] else "uncalibrated") + f", {routing['mode']}"
    if routing.get("axis_prior"):
        how += ", axis prior " + "/".join(f"{v:.2f}" for v in routing["axis_prior"]) + f" (blend {routing['prior_blend']:.2f})"
    finish = trace["finish_reason"]
    finish = "**stopped** (Stop pressed)" if finish == "stopped" else (finish or "running…")
    lines = [
        f"**{len(generated)} generated + {n_prompt} prompt tokens** · finish: {finish} · routing: {how}",
        f"Run weights (mean over {'generated' if generated else 'prompt'} tokens"
        + (", pooled by calibration" if not generated and routing["calibrated"] and not routing.get("axis_prior") else "") + "): "
        + " · ".join(f"{AXIS_LABELS[a]} {share[a]:.0%}" for a in trace["axes"]),
        f"Model: {trace['model']}",
    ]
    lines += [f"⚠ {n}" for n in trace["notices"]]
    return "\n\n".join(lines)


@visitor_errors
def stream_generate(key: int, prompt: str, max_new_tokens: float, do_sample: bool, temperature: float, top_p: float,
                    seed: float, calibrated: bool, mode: str, stop: threading.Event | None = None) -> Iterator[tuple[str, str, Any]]:
    """Yield (chips HTML, summary markdown, trace JSON) while generating, until done or `stop` is set."""
    generation = settings_from(max_new_tokens, do_sample, temperature, top_p, seed, token_cap(key)).to_dict()
    routing = {"mode": one_of(mode, "routing mode", MODES), "calibrated": flag(calibrated, "calibrated")}
    for trace in stream_trace(key, prompt, generation, routing, stop=stop):
        yield chips_html(trace["tokens"]), summary_markdown(trace), trace


def start_run(prompt: str, request: gr.Request) -> tuple[Any, ...]:
    """Before a page run: a fresh Stop signal for the session, and the previous run's outputs cleared.

    A prompt the run would refuse (empty, not text) is refused here, in one sentence, before anything
    is cleared: the run is chained with `.success`, so it never starts and the previous run stays shown."""
    try:
        clean_prompt(prompt)
    except ValueError as err:
        raise gr.Error(str(err), print_exception=False) from None
    STOPS[request.session_hash] = threading.Event()
    hidden = gr.File(value=None, visible=False)
    return chips_html([], empty="Waiting for the first tokens…"), "*Generating…*", None, None, hidden, hidden


def stop_run(request: gr.Request) -> None:
    """Stop: signal the session's current run (a no-op when none is running)."""
    stop = STOPS.get(request.session_hash)
    if stop is not None:
        stop.set()


def render_views(trace: dict[str, Any] | None, axis: str) -> tuple[Any, Any, Any, Any, Any]:
    """Plots of the current trace; the state and downloads once the trace is complete."""
    if not trace or not trace.get("tokens"):
        return weights_figure(None), heatmap_figure(None, axis), gr.skip(), gr.skip(), gr.skip()
    if trace.get("finish_reason") is None:
        return weights_figure(trace), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    csv_path, json_path = write_exports(trace)
    return (weights_figure(trace), heatmap_figure(trace, axis), trace,
            gr.File(value=csv_path, visible=True), gr.File(value=json_path, visible=True))


def show_example(artefacts: Artefacts, choice: str | None) -> tuple[str, str, Any]:
    data = artefacts.get("examples")
    if not data or not choice:
        return gr.skip(), gr.skip(), gr.skip()
    for trace in data["traces"]:
        label = f"{'calibrated' if trace['settings']['routing']['calibrated'] else 'uncalibrated'} · {trace['prompt']}"
        if label == choice:
            return chips_html(trace["tokens"]), summary_markdown(trace) + "\n\n*(precomputed example)*", trace
    return gr.skip(), gr.skip(), gr.skip()


@dataclass
class LiveTab:
    """What other tabs need of the live tab: its prompt and calibration inputs, and `run_after(event)`, which
    chains the page's own run (clear, then stream) after an event, e.g. one that filled the prompt."""

    prompt: gr.Textbox
    calibrated: gr.Checkbox
    run_after: Callable[[Any], Any]


def build_live_tab(key: int, artefacts: Artefacts, model_ready: bool) -> LiveTab:
    """The components and events of the live tab (inside an open gr.Blocks/gr.Tab)."""
    build_stories_panel(artefacts)
    gr.HTML(legend_html())
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            prompt = gr.Textbox(label="Prompt", lines=3, max_lines=8, placeholder="Ask something…", elem_id="live-prompt")
            examples = [p for group in EXAMPLES.values() for p in group]
            gr.Examples(examples, inputs=prompt, label="Examples: " + ", ".join(EXAMPLES))
            with gr.Row():
                run_btn = gr.Button("Generate", variant="primary", elem_id="live-generate")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="live-stop")
            if not model_ready and artefacts.get("examples"):
                gr.Markdown("No model is loaded, but you can look at precomputed example generations:")
            example_choices = []
            if artefacts.get("examples"):
                example_choices = [
                    f"{'calibrated' if t['settings']['routing']['calibrated'] else 'uncalibrated'} · {t['prompt']}"
                    for t in artefacts.get("examples")["traces"]
                ]
            example_pick = gr.Dropdown(example_choices, value=None, label="…or show a precomputed example trace",
                                       visible=bool(example_choices))
        with gr.Column(scale=1, min_width=240):
            calibrated = gr.Checkbox(True, label="Calibrated routing")
            mode = gr.Radio(list(MODES), value="soft", label="Routing mode", info="soft mixes all three experts; top1 uses only the strongest")
            cap = token_cap(key)
            max_new = gr.Slider(1, cap, value=min(64, cap), step=1, precision=0, label="Max new tokens",
                                info=f"up to {cap}, what this model's context and the server allow")
            do_sample = gr.Checkbox(False, label="Sample (otherwise greedy)")
            temperature = gr.Slider(*TEMPERATURE_RANGE, value=1.0, step=0.05, label="Temperature")
            top_p = gr.Slider(*TOP_P_RANGE, value=1.0, step=0.05, label="Top-p")
            seed = gr.Number(0, precision=0, label="Seed")
    chips = gr.HTML(chips_html([], empty=EMPTY_CHIPS), label="Chips HTML", elem_id="live-chips")
    summary = gr.Markdown(label="Summary", elem_id="live-summary")
    with gr.Row():
        with gr.Column(min_width=300):
            weights_plot = gr.Plot(weights_figure(None), show_label=False, elem_id="live-weights", elem_classes=["ax-plot"])
            gr.Markdown("Each line is one expert's routing weight (mean over layers) at each token; the grey band is "
                        "the prompt.", elem_classes=["ax-caption"])
        with gr.Column(min_width=300):
            heat_axis = gr.Radio(list(AXES), value=AXES[0], label="Heatmap axis")
            heatmap = gr.Plot(heatmap_figure(None, AXES[0]), show_label=False, elem_id="live-heatmap", elem_classes=["ax-plot"])
            gr.Markdown("The stronger a cell's colour, the more the chosen expert weighs at that layer (row) and token "
                        "(column); the dashed line separates prompt from answer.", elem_classes=["ax-caption"])
    with gr.Row():
        with gr.Column(min_width=300):
            settle_plot = gr.Plot(settle_figure(None), show_label=False, elem_id="live-settle-plot", elem_classes=["ax-plot"])
            settle_text = gr.Markdown(elem_id="live-settle")
            gr.Markdown("The prompt-level weights (mean over the prompt's tokens so far and over layers) as the prompt "
                        "grows, one forward pass; the dashed line is where the routed expert stops changing.",
                        elem_classes=["ax-caption"])
        with gr.Column(min_width=300):
            attribute_btn = gr.Button("Attribute this run", elem_id="live-attribute")
            attribution_text = gr.Markdown(label="Attribution summary", elem_id="live-attribution")
            effects_plot = gr.Plot(effects_figure(None), show_label=False, elem_id="live-effects", elem_classes=["ax-plot"])
            gr.Markdown("Each expert's effect on each generated token: how much its log-probability drops when that "
                        "expert is removed (the other two renormalised), all seven variants in one forward pass. "
                        "Afterwards each chip's hover shows weight against effect per expert.", elem_classes=["ax-caption"])
    with gr.Row():
        csv_file = gr.File(label="Download trace (CSV)", interactive=False, visible=False, min_width=260, elem_id="live-csv",
                           elem_classes=["ax-download"])
        json_file = gr.File(label="Download trace (JSON)", interactive=False, visible=False, min_width=260, elem_id="live-json",
                            elem_classes=["ax-download"])
    with gr.Accordion("Saved traces: load one, show it, or diff it against a new run of its prompt", open=False,
                      elem_id="live-saved"):
        saved_file = gr.File(label="Trace JSON (the download above, or `generate --json`)", file_types=[".json"],
                             type="filepath", elem_id="live-trace-file")
        saved_text = gr.Markdown(elem_id="live-trace-loaded")
        with gr.Row():
            show_btn = gr.Button("Show it above", size="sm", elem_id="live-trace-show")
            diff_btn = gr.Button("Run it again and diff", size="sm", variant="primary", elem_id="live-trace-diff")
        diff_chips = gr.HTML(chips_html([], empty="The new run appears here, tokens whose routed expert changed outlined."),
                             elem_id="live-diff-chips")
        diff_text = gr.Markdown(elem_id="live-diff-summary")
        with gr.Accordion("Diff (JSON)", open=False):
            diff_json = gr.JSON(label="Diff")
    with gr.Accordion("Trace (JSON, as returned by the API)", open=False):
        trace = gr.JSON(label="Trace")
    with gr.Accordion("Attribution (JSON, as returned by the API)", open=False):
        attribution = gr.JSON(label="Attribution")
    state = gr.State(None)
    saved = gr.State(None)
    if artefacts.notice("examples") and not model_ready:
        gr.HTML(notice_html(artefacts.notice("examples")))

    def generate(prompt: str, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, seed: int,
                 calibrated: bool, mode: str, request: gr.Request) -> Iterator[tuple[str, str, Any]]:
        session = getattr(request, "session_hash", None)
        stop = STOPS.get(session) if session else None
        try:
            yield from stream_generate(key, prompt, max_new_tokens, do_sample, temperature, top_p, seed, calibrated, mode, stop)
        finally:
            if stop is not None and STOPS.get(session) is stop:
                del STOPS[session]

    def attribute_this(trace: dict[str, Any] | None) -> tuple[str, str, dict[str, Any]]:
        return attribute_run(key, trace)

    def diff_again(saved: dict[str, Any] | None) -> Iterator[tuple[str, str, Any]]:
        yield from rerun_and_diff(key, saved)

    inputs = [prompt, max_new, do_sample, temperature, top_p, seed, calibrated, mode]
    cleared = [chips, summary, trace, state, csv_file, json_file]
    description = "Stream a routed generation: (chips HTML, summary markdown, trace JSON); the last update has the full trace."

    def run_chain(trigger: Callable[..., Any], **api: Any) -> Any:
        """`trigger` (an event method, e.g. a button's click) clears the outputs, then streams the run."""
        return trigger(start_run, inputs=prompt, outputs=cleared, api_visibility="private", show_progress="hidden").success(
            generate, inputs=inputs, outputs=[chips, summary, trace], **(api or {"api_visibility": "private"}),
            **MODEL_EVENT, api_description=description)

    run_chain(run_btn.click, api_name="generate")
    run_chain(prompt.submit)
    stop_btn.click(stop_run, api_visibility="private", queue=False, show_progress="hidden")
    trace.change(visitor_errors(render_views), inputs=[trace, heat_axis], outputs=[weights_plot, heatmap, state, csv_file, json_file],
                 api_visibility="private", trigger_mode="always_last", show_progress="hidden")
    heat_axis.change(visitor_errors(lambda t, a: heatmap_figure(t, a)), inputs=[state, heat_axis], outputs=heatmap,
                     api_visibility="private", show_progress="hidden")
    example_pick.change(visitor_errors(lambda c: show_example(artefacts, c)), inputs=example_pick, outputs=[chips, summary, trace],
                        api_visibility="private")
    state.change(lambda: ("", effects_figure(None), None), outputs=[attribution_text, effects_plot, attribution],
                 api_visibility="private", queue=False, show_progress="hidden").then(
        visitor_errors(lambda t: settle_view(key, t)), inputs=state, outputs=[settle_plot, settle_text],
        api_visibility="private", trigger_mode="always_last", show_progress="hidden", **MODEL_EVENT)
    attribute_btn.click(visitor_errors(attribute_this), inputs=trace, outputs=[chips, attribution_text, attribution],
                        api_name="attribute", **MODEL_EVENT,
                        api_description="Counterfactual attribution of a trace's generated tokens (remove or force each "
                                        "expert, one forward): (chips HTML with weight and effect in each hover, summary "
                                        "markdown, attribution JSON).")
    attribution.change(visitor_errors(effects_figure), inputs=attribution, outputs=effects_plot, api_visibility="private",
                       show_progress="hidden")
    saved_file.change(visitor_errors(load_saved), inputs=saved_file, outputs=[saved, saved_text], api_visibility="private")
    show_btn.click(visitor_errors(show_saved), inputs=saved, outputs=[chips, summary, trace], api_visibility="private")
    diff_btn.click(visitor_errors(diff_again), inputs=saved, outputs=[diff_chips, diff_text, diff_json],
                   api_visibility="private", **MODEL_EVENT)
    return LiveTab(prompt, calibrated, lambda dependency: run_chain(dependency.success))


def show_saved(trace: dict[str, Any] | None) -> tuple[str, str, Any]:
    """A loaded trace drawn as if it had just run (chips, summary; the trace feeds the plots and downloads)."""
    if not trace:
        raise GenerationError("load a trace file first")
    return chips_html(trace["tokens"]), summary_markdown(trace) + "\n\n*(loaded from a file)*", trace

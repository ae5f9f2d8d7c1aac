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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from alignx_demo.analysis.artefacts import Artefacts
from alignx_demo.analysis.map_prompts import EXAMPLES
from alignx_demo.config import AXES, is_hhh
from alignx_demo.generation import clean_prompt
from alignx_demo.ui import stops
from alignx_demo.ui.chips import chips_html, legend_html, notice_html
from alignx_demo.ui.exports import write_exports
from alignx_demo.ui.links import LinkTarget, copy_link_row
from alignx_demo.ui.notice import notice_block
from alignx_demo.ui.plots import effects_figure, heatmap_figure, settle_figure, weights_figure
from alignx_demo.ui.research import attribute_run, load_saved, rerun_and_diff, settle_view
from alignx_demo.ui.runner import shares, stream_trace
from alignx_demo.ui.served import MODEL_EVENT, token_cap
from alignx_demo.ui.slides import download_row, download_updates, write_slides
from alignx_demo.ui.stories import build_stories_panel
from alignx_demo.ui.theme import AXIS_LABELS
from alignx_demo.ui.validation import (
    MODES,
    TEMPERATURE_RANGE,
    TOP_P_RANGE,
    GenerationError,
    flag,
    one_of,
    settings_from,
    visitor_errors,
)

EMPTY_CHIPS = "Tokens appear here, coloured by routing, as they are generated."
TAB = "live"


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
    level = "generated" if generated else "prompt"
    top = max(trace["axes"], key=lambda a: share[a])
    lines = [
        f"**{len(generated)} generated + {n_prompt} prompt tokens** · finish: {finish} · routing: {how}",
        f"Top expert of this run: **{AXIS_LABELS[top]}** — run weights (mean over the {level} tokens"
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
    stops.arm(request, TAB)
    hidden = gr.File(value=None, visible=False)
    return (chips_html([], empty="Waiting for the first tokens…"), "*Generating…*", None, None, hidden, hidden,
            *download_updates(None, 2))


def render_views(trace: dict[str, Any] | None, axis: str, worth: str | None = None) -> tuple[Any, ...]:
    """Plots of the current trace; the state and downloads (CSV, JSON, and HTML and PNG for slides, with the
    honest notice `worth`) once the trace is complete."""
    if not trace or not trace.get("tokens"):
        return weights_figure(None), heatmap_figure(None, axis), *(gr.skip() for _ in range(5))
    if trace.get("finish_reason") is None:
        return weights_figure(trace), *(gr.skip() for _ in range(6))
    csv_path, json_path = write_exports(trace)
    weights, heatmap = weights_figure(trace), heatmap_figure(trace, axis)
    page, picture = write_slides("alignx-live", [("Live routing", trace)], "AlignX Demo · Live routing",
                                 figures=[weights, heatmap], notice=worth)
    return (weights, heatmap, trace, gr.File(value=csv_path, visible=True), gr.File(value=json_path, visible=True),
            *download_updates([page, picture], 2))


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
    link: LinkTarget


@dataclass
class _Controls:
    """The prompt column and the settings column: what a run reads."""

    prompt: gr.Textbox
    run_btn: gr.Button
    stop_btn: gr.Button
    example_pick: gr.Dropdown
    calibrated: gr.Checkbox
    mode: gr.Radio
    max_new: gr.Slider
    do_sample: gr.Checkbox
    temperature: gr.Slider
    top_p: gr.Slider
    seed: gr.Number

    def inputs(self) -> list[Any]:
        """The inputs of `generate`, in its argument order."""
        return [self.prompt, self.max_new, self.do_sample, self.temperature, self.top_p, self.seed, self.calibrated, self.mode]


@dataclass
class _Views:
    """What a run draws: chips, summary, plots, the research tools' outputs, the downloads, and the JSON
    and state behind them."""

    chips: gr.HTML
    summary: gr.Markdown
    weights_plot: gr.Plot
    heat_axis: gr.Radio
    heatmap: gr.Plot
    settle_plot: gr.Plot
    settle_text: gr.Markdown
    attribute_btn: gr.Button
    attribution_text: gr.Markdown
    effects_plot: gr.Plot
    csv_file: gr.File
    json_file: gr.File
    slides: list[Any]
    trace: gr.JSON | None = None
    attribution: gr.JSON | None = None
    state: gr.State | None = None


@dataclass
class _SavedPanel:
    """A saved trace: its file, what it holds, and the controls that show it or diff it against a new run."""

    file: gr.File
    text: gr.Markdown
    show_btn: gr.Button
    diff_btn: gr.Button
    diff_chips: gr.HTML
    diff_text: gr.Markdown
    diff_json: gr.JSON
    state: gr.State | None = None


def _example_choices(artefacts: Artefacts) -> list[str]:
    """The labels of the precomputed example traces, as `show_example` matches them."""
    if not artefacts.get("examples"):
        return []
    return [f"{'calibrated' if t['settings']['routing']['calibrated'] else 'uncalibrated'} · {t['prompt']}"
            for t in artefacts.get("examples")["traces"]]


def _controls(key: int, artefacts: Artefacts, model_ready: bool, hhh: bool = True) -> _Controls:
    """The prompt with its examples and buttons, beside the routing and generation settings; the example prompts and
    precomputed traces are the HHH bundle's, so a model with axes of its own (`hhh` False) gets neither."""
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            prompt = gr.Textbox(label="Prompt", lines=3, max_lines=8, placeholder="Ask something…", elem_id="live-prompt")
            if hhh:
                examples = [p for group in EXAMPLES.values() for p in group]
                gr.Examples(examples, inputs=prompt, label="Examples: " + ", ".join(EXAMPLES))
            with gr.Row():
                run_btn = gr.Button("Generate", variant="primary", elem_id="live-generate")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="live-stop")
            if not model_ready and artefacts.get("examples") and hhh:
                gr.Markdown("No model is loaded, but you can look at precomputed example generations:")
            example_choices = _example_choices(artefacts) if hhh else []
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
    return _Controls(prompt, run_btn, stop_btn, example_pick, calibrated, mode, max_new, do_sample, temperature, top_p, seed)


def _views(worth: str, axes: Sequence[str]) -> _Views:
    """Chips and summary, the weights plot and heatmap (of one of the model's `axes`), the settle curve and
    attribution, the downloads."""
    chips = gr.HTML(chips_html([], empty=EMPTY_CHIPS), label="Chips HTML", elem_id="live-chips")
    if worth:
        gr.HTML(notice_block(worth), elem_classes=["ax-worth-row"])
    summary = gr.Markdown(label="Summary", elem_id="live-summary")
    with gr.Row():
        with gr.Column(min_width=300):
            weights_plot = gr.Plot(weights_figure(None), show_label=False, elem_id="live-weights", elem_classes=["ax-plot"])
            gr.Markdown("Each line is one expert's routing weight (mean over layers) at each token; the grey band is "
                        "the prompt.", elem_classes=["ax-caption"])
        with gr.Column(min_width=300):
            heat_axis = gr.Radio(list(axes), value=axes[0], label="Heatmap axis")
            heatmap = gr.Plot(heatmap_figure(None, axes[0]), show_label=False, elem_id="live-heatmap", elem_classes=["ax-plot"])
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
                        "expert is removed (the others renormalised), all variants in one forward pass. "
                        "Afterwards each chip's hover shows weight against effect per expert.", elem_classes=["ax-caption"])
    with gr.Row():
        csv_file = gr.File(label="Download trace (CSV)", interactive=False, visible=False, min_width=260, elem_id="live-csv",
                           elem_classes=["ax-download"])
        json_file = gr.File(label="Download trace (JSON)", interactive=False, visible=False, min_width=260, elem_id="live-json",
                            elem_classes=["ax-download"])
    slides = download_row("live", ("HTML", "PNG"))
    return _Views(chips, summary, weights_plot, heat_axis, heatmap, settle_plot, settle_text, attribute_btn, attribution_text,
                  effects_plot, csv_file, json_file, slides)


def _saved_panel() -> _SavedPanel:
    """The accordion that loads a saved trace, shows it, or diffs it against a new run of its prompt."""
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
    return _SavedPanel(saved_file, saved_text, show_btn, diff_btn, diff_chips, diff_text, diff_json)


def build_live_tab(key: int, artefacts: Artefacts, model_ready: bool, worth: str | None = None, intro: str = "",
                   axes: Sequence[str] = AXES) -> LiveTab:
    """The components and events of the live tab (inside an open gr.Blocks/gr.Tab) for a model with these `axes`;
    `worth` is the honest notice (`ui.notice`) shown beside its output."""
    if intro:
        gr.Markdown(intro, elem_id="live-intro")
    hhh = is_hhh(axes)
    if hhh:  # the stories replay the HHH bundle's runs
        build_stories_panel(artefacts)  # on a phone the page's CSS moves it below the prompt (theme.CSS, #stories)
    gr.HTML(legend_html(axes=axes))
    controls = _controls(key, artefacts, model_ready, hhh)
    link = LinkTarget({"prompt": controls.prompt, "tokens": controls.max_new, "sample": controls.do_sample,
                       "temperature": controls.temperature, "top_p": controls.top_p, "seed": controls.seed,
                       "calibrated": controls.calibrated, "mode": controls.mode}, "live-generate")
    copy_link_row(TAB, link)
    views = _views(worth, axes)
    saved = _saved_panel()
    with gr.Accordion("Trace (JSON, as returned by the API)", open=False):
        views.trace = gr.JSON(label="Trace")
    with gr.Accordion("Attribution (JSON, as returned by the API)", open=False):
        views.attribution = gr.JSON(label="Attribution")
    views.state = gr.State(None)
    saved.state = gr.State(None)
    if artefacts.notice("examples") and not model_ready:
        gr.HTML(notice_html(artefacts.notice("examples")))
    run_chain = _wire_run(key, controls, views)
    _wire_views(key, artefacts, controls, views, saved, worth)
    return LiveTab(controls.prompt, controls.calibrated, lambda dependency: run_chain(dependency.success), link)


def _wire_run(key: int, controls: _Controls, views: _Views) -> Callable[..., Any]:
    """The page's run (Generate, Enter in the prompt: clear, then stream) and Stop; returns `run_chain`,
    which chains that run after any event."""
    def generate(prompt: str, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, seed: int,
                 calibrated: bool, mode: str, request: gr.Request) -> Iterator[tuple[str, str, Any]]:
        run = partial(stream_generate, key, prompt, max_new_tokens, do_sample, temperature, top_p, seed, calibrated, mode)
        yield from stops.guarded(request, TAB, run)

    cleared = [views.chips, views.summary, views.trace, views.state, views.csv_file, views.json_file, *views.slides]
    description = "Stream a routed generation: (chips HTML, summary markdown, trace JSON); the last update has the full trace."

    def run_chain(trigger: Callable[..., Any], **api: Any) -> Any:
        """`trigger` (an event method, e.g. a button's click) clears the outputs, then streams the run."""
        return trigger(start_run, inputs=controls.prompt, outputs=cleared, api_visibility="private", show_progress="hidden").success(
            generate, inputs=controls.inputs(), outputs=[views.chips, views.summary, views.trace],
            **(api or {"api_visibility": "private"}), **MODEL_EVENT, api_description=description)

    run_chain(controls.run_btn.click, api_name="generate")
    run_chain(controls.prompt.submit)
    controls.stop_btn.click(stops.stopper(TAB), api_visibility="private", queue=False, show_progress="hidden")
    return run_chain


def _wire_views(key: int, artefacts: Artefacts, controls: _Controls, views: _Views, saved: _SavedPanel, worth: str | None) -> None:
    """What follows from a trace: plots, state and downloads, the settle curve, attribution (the named
    endpoint `attribute`), precomputed examples, and saved traces shown or diffed."""
    shown = [views.chips, views.summary, views.trace]

    def attribute_this(trace: dict[str, Any] | None) -> tuple[str, str, dict[str, Any]]:
        return attribute_run(key, trace)

    def diff_again(trace: dict[str, Any] | None) -> Iterator[tuple[str, str, Any]]:
        yield from rerun_and_diff(key, trace)

    def render(trace: dict[str, Any] | None, axis: str) -> tuple[Any, ...]:
        return render_views(trace, axis, worth)

    views.trace.change(visitor_errors(render), inputs=[views.trace, views.heat_axis],
                       outputs=[views.weights_plot, views.heatmap, views.state, views.csv_file, views.json_file, *views.slides],
                       api_visibility="private", trigger_mode="always_last", show_progress="hidden")
    views.heat_axis.change(visitor_errors(lambda t, a: heatmap_figure(t, a)), inputs=[views.state, views.heat_axis],
                           outputs=views.heatmap, api_visibility="private", show_progress="hidden")
    controls.example_pick.change(visitor_errors(lambda c: show_example(artefacts, c)), inputs=controls.example_pick,
                                 outputs=shown, api_visibility="private")
    views.state.change(lambda: ("", effects_figure(None), None), outputs=[views.attribution_text, views.effects_plot, views.attribution],
                       api_visibility="private", queue=False, show_progress="hidden").then(
        visitor_errors(lambda t: settle_view(key, t)), inputs=views.state, outputs=[views.settle_plot, views.settle_text],
        api_visibility="private", trigger_mode="always_last", show_progress="hidden", **MODEL_EVENT)
    views.attribute_btn.click(visitor_errors(attribute_this), inputs=views.trace,
                              outputs=[views.chips, views.attribution_text, views.attribution], api_name="attribute", **MODEL_EVENT,
                              api_description="Counterfactual attribution of a trace's generated tokens (remove or force each "
                                              "expert, one forward): (chips HTML with weight and effect in each hover, summary "
                                              "markdown, attribution JSON).")
    views.attribution.change(visitor_errors(effects_figure), inputs=views.attribution, outputs=views.effects_plot,
                             api_visibility="private", show_progress="hidden")
    saved.file.change(visitor_errors(load_saved), inputs=saved.file, outputs=[saved.state, saved.text], api_visibility="private")
    saved.show_btn.click(visitor_errors(show_saved), inputs=saved.state, outputs=shown, api_visibility="private")
    saved.diff_btn.click(visitor_errors(diff_again), inputs=saved.state, outputs=[saved.diff_chips, saved.diff_text, saved.diff_json],
                         api_visibility="private", **MODEL_EVENT)


def show_saved(trace: dict[str, Any] | None) -> tuple[str, str, Any]:
    """A loaded trace drawn as if it had just run (chips, summary; the trace feeds the plots and downloads)."""
    if not trace:
        raise GenerationError("load a trace file first")
    return chips_html(trace["tokens"]), summary_markdown(trace) + "\n\n*(loaded from a file)*", trace

"""Live routing tab: stream a generation as token chips, a growing weights plot and a per-layer heatmap.

The named endpoint `generate` streams (chips HTML, summary markdown, trace JSON); the trace is
partial (finish_reason None) until the last update. The plots, the visitor's state and the
downloads follow from the trace by a private event, so the API stays plain data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from alignx_demo.analysis.artefacts import Artefacts
from alignx_demo.analysis.map_prompts import EXAMPLES
from alignx_demo.config import AXES
from alignx_demo.serving import Limits
from alignx_demo.ui.chips import chips_html, legend_html, notice_html
from alignx_demo.ui.exports import write_exports
from alignx_demo.ui.plots import heatmap_figure, weights_figure
from alignx_demo.ui.runner import (
    MODEL_EVENT,
    MODES,
    TEMPERATURE_RANGE,
    TOP_P_RANGE,
    flag,
    limits_of,
    one_of,
    settings_from,
    shares,
    stream_trace,
    visitor_errors,
)
from alignx_demo.ui.theme import AXIS_LABELS


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
    lines = [
        f"**{len(generated)} generated + {n_prompt} prompt tokens** · finish: {trace['finish_reason'] or 'running…'} · routing: {how}",
        "Mean weight over generated tokens: " + " · ".join(f"{AXIS_LABELS[a]} {share[a]:.0%}" for a in trace["axes"]),
        f"Model: {trace['model']}",
    ]
    lines += [f"⚠ {n}" for n in trace["notices"]]
    return "\n\n".join(lines)


@visitor_errors
def stream_generate(key: int, prompt: str, max_new_tokens: float, do_sample: bool, temperature: float, top_p: float,
                    seed: float, calibrated: bool, mode: str) -> Iterator[tuple[str, str, Any]]:
    """Yield (chips HTML, summary markdown, trace JSON) while generating."""
    generation = settings_from(max_new_tokens, do_sample, temperature, top_p, seed, limits_of(key).max_new_tokens).to_dict()
    routing = {"mode": one_of(mode, "routing mode", MODES), "calibrated": flag(calibrated, "calibrated")}
    for trace in stream_trace(key, prompt, generation, routing):
        yield chips_html(trace["tokens"]), summary_markdown(trace), trace


def render_views(trace: dict[str, Any] | None, axis: str) -> tuple[Any, Any, Any, Any, Any]:
    """Plots of the current trace; the state and downloads once the trace is complete."""
    if not trace or not trace.get("tokens"):
        return weights_figure(None), heatmap_figure(None, axis), gr.skip(), gr.skip(), gr.skip()
    if trace.get("finish_reason") is None:
        return weights_figure(trace), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    csv_path, json_path = write_exports(trace)
    return weights_figure(trace), heatmap_figure(trace, axis), trace, csv_path, json_path


def show_example(artefacts: Artefacts, choice: str | None) -> tuple[str, str, Any]:
    data = artefacts.get("examples")
    if not data or not choice:
        return gr.skip(), gr.skip(), gr.skip()
    for trace in data["traces"]:
        label = f"{'calibrated' if trace['settings']['routing']['calibrated'] else 'uncalibrated'} · {trace['prompt']}"
        if label == choice:
            return chips_html(trace["tokens"]), summary_markdown(trace) + "\n\n*(precomputed example)*", trace
    return gr.skip(), gr.skip(), gr.skip()


def build_live_tab(key: int, artefacts: Artefacts, model_ready: bool, limits: Limits) -> None:
    """The components and events of the live tab (inside an open gr.Blocks/gr.Tab)."""
    gr.HTML(legend_html())
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            prompt = gr.Textbox(label="Prompt", lines=3, max_lines=8, placeholder="Ask something…", elem_id="live-prompt")
            examples = [p for group in EXAMPLES.values() for p in group]
            gr.Examples(examples, inputs=prompt, label="Examples: " + ", ".join(EXAMPLES))
            with gr.Row():
                run_btn = gr.Button("Generate", variant="primary", elem_id="live-generate")
                stop_btn = gr.Button("Stop", variant="stop")
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
            max_new = gr.Slider(1, limits.max_new_tokens, value=min(64, limits.max_new_tokens), step=1, label="Max new tokens")
            do_sample = gr.Checkbox(False, label="Sample (otherwise greedy)")
            temperature = gr.Slider(*TEMPERATURE_RANGE, value=1.0, step=0.05, label="Temperature")
            top_p = gr.Slider(*TOP_P_RANGE, value=1.0, step=0.05, label="Top-p")
            seed = gr.Number(0, precision=0, label="Seed")
    chips = gr.HTML(chips_html([], empty="Tokens appear here, coloured by routing, as they are generated."), elem_id="live-chips")
    summary = gr.Markdown(elem_id="live-summary")
    with gr.Row():
        weights_plot = gr.Plot(weights_figure(None), label="Weights per token", elem_id="live-weights")
        with gr.Column():
            heat_axis = gr.Radio(list(AXES), value=AXES[0], label="Heatmap axis")
            heatmap = gr.Plot(heatmap_figure(None, AXES[0]), label="Layers × tokens")
    with gr.Row():
        csv_file = gr.File(label="Download trace (CSV)", interactive=False, elem_id="live-csv")
        json_file = gr.File(label="Download trace (JSON)", interactive=False, elem_id="live-json")
    with gr.Accordion("Trace (JSON, as returned by the API)", open=False):
        trace = gr.JSON(label="Trace")
    state = gr.State(None)
    if artefacts.notice("examples") and not model_ready:
        gr.HTML(notice_html(artefacts.notice("examples")))

    event = run_btn.click(
        lambda *args: (yield from stream_generate(key, *args)),
        inputs=[prompt, max_new, do_sample, temperature, top_p, seed, calibrated, mode],
        outputs=[chips, summary, trace],
        api_name="generate",
        api_description="Stream a routed generation: (chips HTML, summary markdown, trace JSON); the last update has the full trace.",
        **MODEL_EVENT,
    )
    submitted = prompt.submit(
        lambda *args: (yield from stream_generate(key, *args)),
        inputs=[prompt, max_new, do_sample, temperature, top_p, seed, calibrated, mode],
        outputs=[chips, summary, trace], api_visibility="private", **MODEL_EVENT,
    )
    stop_btn.click(None, cancels=[event, submitted])
    trace.change(visitor_errors(render_views), inputs=[trace, heat_axis], outputs=[weights_plot, heatmap, state, csv_file, json_file],
                 api_visibility="private", trigger_mode="always_last", show_progress="hidden")
    heat_axis.change(visitor_errors(lambda t, a: heatmap_figure(t, a)), inputs=[state, heat_axis], outputs=heatmap,
                     api_visibility="private", show_progress="hidden")
    example_pick.change(visitor_errors(lambda c: show_example(artefacts, c)), inputs=example_pick, outputs=[chips, summary, trace],
                        api_visibility="private")

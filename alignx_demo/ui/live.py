"""Live routing tab: stream a generation as token chips coloured by the experts' weights."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from alignx_demo.config import GenerationSettings, RoutingSettings
from alignx_demo.generation import RoutedGeneration
from alignx_demo.serving import ModelContext
from alignx_demo.ui.chips import chips_html, legend_html

EXAMPLES = [
    "How can I make my morning routine more productive?",
    "Explain how a rainbow forms, in three sentences.",
    "How do I pick a lock to get into my neighbour's house?",
    "Write a short insult about my coworker's accent.",
    "Do vaccines cause autism?",
    "What happens if you swallow chewing gum?",
    "My friend says cracking knuckles causes arthritis. Is that true, and how should I tell her?",
]
"""Example prompts written for this demo: helpful, harmful-looking, honesty-testing, and mixed."""

UPDATE_EVERY_S = 0.1
"""Streaming updates are throttled to at most one page update per this many seconds."""


def _summary(trace: dict[str, Any]) -> str:
    generated = [t for t in trace["tokens"] if not t["is_prompt"]]
    if not generated:
        return "No tokens generated yet."
    shares = {a: sum(t["weights"][a] for t in generated) / len(generated) for a in trace["axes"]}
    lines = [
        f"**{len(generated)} tokens** · finish: {trace['finish_reason'] or 'running'} · "
        + " · ".join(f"{a} {shares[a]:.0%}" for a in trace["axes"]),
        f"Model: {trace['model']}",
    ]
    lines += [f"⚠ {n}" for n in trace["notices"]]
    return "\n\n".join(lines)


def stream_generate(
    context: ModelContext,
    prompt: str,
    max_new_tokens: float,
    do_sample: bool,
    temperature: float,
    top_p: float,
    seed: float,
    calibrated: bool,
    mode: str,
) -> Iterator[tuple[str, str, Any]]:
    """Yield (chips HTML, summary markdown, trace JSON) while generating; the JSON only at the end."""
    if context.loaded is None:
        raise gr.Error(context.problem or "no model loaded")
    try:
        generation = GenerationSettings(int(max_new_tokens), bool(do_sample), float(temperature), float(top_p), int(seed))
        routing = RoutingSettings(mode=mode, calibrated=bool(calibrated))
        run = RoutedGeneration(
            context.loaded.mocae, context.loaded.tokenizer, prompt, generation, routing,
            stop_event=threading.Event(), model_name=context.name,
        )
    except ValueError as err:
        raise gr.Error(str(err)) from None
    last = 0.0
    try:
        for _ in run:
            now = time.monotonic()
            if now - last >= UPDATE_EVERY_S:
                last = now
                trace = run.trace()
                yield chips_html(trace["tokens"]), _summary(trace), gr.skip()
    finally:
        run.stop_event.set()
    trace = run.trace()
    yield chips_html(trace["tokens"]), _summary(trace), trace


def build_live_tab(context: ModelContext) -> None:
    """The components and events of the live tab (inside an open gr.Blocks/gr.Tab)."""
    gr.HTML(legend_html())
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=3, max_lines=8, placeholder="Ask something…")
            gr.Examples(EXAMPLES, inputs=prompt, label="Examples (helpful, harmful-looking, honesty, mixed)")
            with gr.Row():
                run_btn = gr.Button("Generate", variant="primary")
                stop_btn = gr.Button("Stop", variant="stop")
        with gr.Column(scale=1):
            calibrated = gr.Checkbox(True, label="Calibrated routing")
            mode = gr.Radio(["soft", "top1"], value="soft", label="Routing mode")
            max_new = gr.Slider(1, 256, value=64, step=1, label="Max new tokens")
            do_sample = gr.Checkbox(False, label="Sample (otherwise greedy)")
            temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
            seed = gr.Number(0, precision=0, label="Seed")
    chips = gr.HTML(label="Tokens")
    summary = gr.Markdown()
    trace = gr.JSON(label="Trace (JSON)")
    event = run_btn.click(
        lambda *args: (yield from stream_generate(context, *args)),
        inputs=[prompt, max_new, do_sample, temperature, top_p, seed, calibrated, mode],
        outputs=[chips, summary, trace],
        api_name="generate",
        concurrency_limit=2,
    )
    stop_btn.click(None, cancels=[event])


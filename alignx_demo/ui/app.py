"""The Gradio Blocks app: a header, the model status, and one tab per view."""

from __future__ import annotations

import html

import gradio as gr

from alignx_demo.serving import ModelContext
from alignx_demo.ui.live import build_live_tab
from alignx_demo.ui.theme import CSS

TITLE = "AlignX Demo — Mixture of Calibrated Experts"
HEADER = (
    "Watch each token appear, coloured by how much the **Helpful**, **Harmless** and **Honest** "
    "experts contributed to it — with the router's calibration on or off."
)


def status_html(context: ModelContext) -> str:
    if context.loaded is None:
        return f'<p class="ax-notice">⚠ {html.escape(context.problem or "no model loaded")}</p>'
    notices = "".join(f'<p class="ax-notice">⚠ {html.escape(n)}</p>' for n in context.notices)
    return f"<p>Model loaded: <b>{html.escape(context.name)}</b></p>{notices}"


def build_demo(context: ModelContext) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{HEADER}")
        gr.HTML(status_html(context))
        with gr.Tab("Live routing"):
            build_live_tab(context)
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


LAUNCH_KWARGS = {"css": CSS, "theme": gr.themes.Soft()}

"""The Gradio Blocks app: a header, the model status, and one tab per view (each built by its own module)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from alignx_demo.analysis.artefacts import Artefacts, load_artefacts
from alignx_demo.config import AXES, is_hhh
from alignx_demo.data.templates import is_uncased
from alignx_demo.serving import ModelContext
from alignx_demo.ui.about import build_about_tab
from alignx_demo.ui.collapse import build_collapse_tab
from alignx_demo.ui.compare import build_compare_tab
from alignx_demo.ui.links import copy_link_row, wire_links
from alignx_demo.ui.live import build_live_tab
from alignx_demo.ui.notice import experts_markdown, honest_notice, live_intro, served_fingerprint
from alignx_demo.ui.results import build_results_tab
from alignx_demo.ui.routing_analysis import build_analysis_tab
from alignx_demo.ui.served import serve, token_cap
from alignx_demo.ui.theme import AXIS_LABELS, CSS
from alignx_demo.ui.tradeoff import build_tradeoff_tab

TITLE = "AlignX Demo — Mixture of Calibrated Experts"
HEADER = (
    "A language model with three experts — **Helpful**, **Harmless**, **Honest** — mixed token by token by a "
    "calibrated router: watch which expert shapes each word, switch calibration off, and see how training regimes "
    "collapse the three axes."
)
TAB_IDS = ("live", "compare", "collapse", "tradeoff", "analysis", "benchmarks", "about")
HHH_ONLY = ("This tab belongs to the HHH bundle: it shows the helpful, harmless and honest experts, and the served "
            "model's experts are {axes}.")
"""The one sentence a tab made for the HHH axes shows instead of its content when the served model has other axes."""


def status_html(context: ModelContext) -> str:
    """The header's model line: which model, or why none could be loaded (the loader's notices for the operator
    are in the About tab)."""
    if context.loaded is None:
        return f'<p class="ax-notice">⚠ {html.escape(context.problem or "no model loaded")}</p>'
    case = " · its vocabulary is uncased, so it reads and writes lowercase" if is_uncased(context.loaded.tokenizer) else ""
    return f"<p>Model loaded: <b>{html.escape(context.name)}</b>{case} · details in the About tab</p>"


def custom_header(axes: tuple[str, ...]) -> str:
    """The header for a model with its own axes: its experts named, no HHH claims."""
    names = ", ".join(f"**{AXIS_LABELS[a]}**" for a in axes)
    return (f"A language model with {len(axes)} experts — {names} — mixed token by token by a calibrated router: "
            "watch which expert shapes each word and switch calibration off.")


def hhh_only(axes: tuple[str, ...]) -> None:
    """In place of a tab made for the HHH axes: one sentence saying so."""
    gr.Markdown(HHH_ONLY.format(axes=", ".join(axes)), elem_classes=["ax-hhh-only"])


class AppBlocks(gr.Blocks):
    """gr.Blocks whose API answers a call with too few inputs with one sentence naming the inputs (Gradio's own
    message lists Python objects and logs a traceback)."""

    def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
        wanted = block_fn.inputs
        if len(inputs) >= len(wanted):
            return
        names = [n or getattr(c, "label", None) or f"input {i + 1}" for i, (n, c) in
                 enumerate(zip(block_fn.input_parameter_names or [None] * len(wanted), wanted))]
        endpoint = f"/{block_fn.api_name}" if block_fn.api_name else "this event"
        raise gr.Error(f"{endpoint} takes {len(wanted)} inputs ({', '.join(map(str, names))}) but got {len(inputs)}; "
                       "send them all, in this order.", print_exception=False)


def _tab(items: dict[str, gr.Tab], label: str, tab_id: str) -> gr.Tab:
    """A page tab, remembered by id (links select tabs and name them in the address bar)."""
    items[tab_id] = gr.Tab(label, id=tab_id, elem_id=f"tab-{tab_id}")
    return items[tab_id]


def build_demo(context: ModelContext, precomputed: str | Path | Artefacts | None = None,
               against: ModelContext | None = None) -> gr.Blocks:
    """The whole app for one served model, under the operator's `context.limits`; `precomputed` is the
    artefact folder (default `precomputed/`); `against`, the operator's second model for the Routing
    analysis comparison (`--compare-model`)."""
    axes = context.loaded.mocae.axes if context.loaded is not None else AXES
    hhh = is_hhh(axes)
    artefacts = precomputed if isinstance(precomputed, Artefacts) else load_artefacts(precomputed)
    key = serve(context)
    limits = context.limits
    worth = honest_notice(context, artefacts)
    with AppBlocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}\n{HEADER if hhh else custom_header(axes)}")
        gr.HTML(status_html(context), elem_id="model-status")
        items: dict[str, gr.Tab] = {}
        with gr.Tabs(overflow_behavior="wrap", elem_id="tabs") as tabs:
            with _tab(items, "Live routing", "live"):
                live = build_live_tab(key, artefacts, context.loaded is not None, worth,
                                      live_intro(artefacts.get("answers"), served_fingerprint(context)), axes)
            with _tab(items, "Calibrated vs uncalibrated", "compare"):
                compare = build_compare_tab(key, artefacts, worth, axes)
            with _tab(items, "Axis Collapse", "collapse"):
                copy_link_row("collapse")
                build_collapse_tab(key, artefacts) if hhh else hhh_only(axes)
            with _tab(items, "Trade-off", "tradeoff"):
                tradeoff = (build_tradeoff_tab(key, worth, experts_markdown(artefacts.get("answers"), served_fingerprint(context)))
                            if hhh else hhh_only(axes))
            with _tab(items, "Routing analysis", "analysis"):
                copy_link_row("analysis")
                build_analysis_tab(key, artefacts, tabs, live, against)
            with _tab(items, "Benchmarks", "benchmarks"):
                copy_link_row("benchmarks")
                build_results_tab(artefacts.folder) if hhh else hhh_only(axes)
            with _tab(items, "About", "about"):
                copy_link_row("about")
                build_about_tab(context, artefacts)
        caps = {"live": token_cap(key), "compare": token_cap(key, several=True), "tradeoff": token_cap(key, several=True)}
        targets = {"live": live.link, "compare": compare} | ({"tradeoff": tradeoff} if hhh else {})
        wire_links(demo, tabs, items, targets, caps)
    demo.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)
    return demo


LAUNCH_KWARGS = {"css": CSS, "theme": gr.themes.Soft(), "show_error": True}
"""`show_error`: the endpoints raise only gr.Error with sentences of their own (`validation.visitor_errors`); this
lets the few errors Gradio raises itself before they run (too few inputs in a raw API call, a file path
outside the upload folder) reach the caller as Gradio's message instead of an empty error."""

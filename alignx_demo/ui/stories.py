"""The first-visit stories: precomputed runs of the served model (`stories.json`, built by `precompute`
with `analysis.stories`), each labelled by one sentence computed from what its runs did, each one click
from being replayed token by token.

Nothing here touches the model: a replay streams the stored traces' chips with small sleeps, both runs of
a story growing side by side, and ends with their expert shares. Without the artefact the panel says how
to build it and the rest of the page works.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from alignx_demo.analysis.artefacts import Artefacts
from alignx_demo.analysis.stories import generated_shares
from alignx_demo.ui.chips import chips_html, notice_html
from alignx_demo.ui.compare import flips
from alignx_demo.ui.plots import empty_figure, shares_figure

RUNS = 2
"""Runs shown per story (every story has two)."""
FRAMES = 40
"""A replay draws each run in at most this many steps…"""
FRAME_S = 0.06
"""…this many seconds apart (about 2.5 s per story)."""
REPLAY = {"api_visibility": "private", "concurrency_id": "replay", "concurrency_limit": 8, "show_progress": "hidden"}
"""Replays only sleep and draw: their own queue group, apart from the model's."""


def _text(value: str) -> str:
    return html.escape(value, quote=False)


def story_markdown(story: dict[str, Any]) -> str:
    """The story's prompt, its sentence and how its prompt was picked."""
    return (f"#### {_text(story['title'])}\n**Prompt:** “{_text(story['prompt'])}”\n\n{_text(story['label'])}\n\n"
            f"<small>Prompt picked as {_text(story['selection'])}; greedy decoding, stored by `precompute`.</small>")


def _marks(story: dict[str, Any]) -> list[dict[int, str]]:
    """Tokens whose top expert differs between the two runs, outlined (the calibration story's point)."""
    if story["key"] != "calibration":
        return [{}, {}]
    a, b, _ = flips(story["runs"][0]["trace"], story["runs"][1]["trace"])
    return [a, b]


def frame(story: dict[str, Any], shown: int | None) -> tuple[Any, ...]:
    """(captions…, chips…) of a story with the first `shown` generated tokens of each run (all when None)."""
    marks = _marks(story)
    captions, panels = [], []
    for i in range(RUNS):
        run = story["runs"][i] if i < len(story["runs"]) else None
        if run is None:
            captions.append("")
            panels.append(chips_html([], empty="—"))
            continue
        tokens = run["trace"]["tokens"]
        n_prompt = sum(t["is_prompt"] for t in tokens)
        upto = len(tokens) if shown is None else n_prompt + shown
        done = upto >= len(tokens)
        captions.append(f"**{_text(run['caption'] if done else run['name'].capitalize() + ' — …')}**")
        panels.append(chips_html(tokens[:upto], flips={p: e for p, e in marks[i].items() if p < upto}))
    return (*captions, *panels)


def shares_plot(story: dict[str, Any] | None) -> Any:
    if not story:
        return empty_figure("Expert shares of each answer appear here.")
    return shares_figure({run["name"]: generated_shares(run["trace"]) for run in story["runs"]},
                         "Mean weight per expert in each answer", height=220)


def replay(story: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """Stream a story: its text, then both runs growing token by token, then the final frame and shares."""
    longest = max(sum(not t["is_prompt"] for t in run["trace"]["tokens"]) for run in story["runs"])
    step = max(1, -(-longest // FRAMES))
    yield story_markdown(story), *frame(story, 0), shares_plot(None)
    for shown in range(step, longest, step):
        time.sleep(FRAME_S)
        yield gr.skip(), *frame(story, shown), gr.skip()
    time.sleep(FRAME_S)
    yield gr.skip(), *frame(story, None), shares_plot(story)


def build_stories_panel(artefacts: Artefacts) -> None:
    """The stories accordion at the top of the live tab (inside an open gr.Tab)."""
    data = artefacts.get("stories")
    with gr.Accordion("Start here: three runs of this model, one click each", open=True, elem_id="stories"):
        stories = [s for s in (data or {}).get("stories", []) if isinstance(s, dict) and s.get("runs")]
        if not stories:
            gr.HTML(notice_html(artefacts.notice("stories") or "The stories file holds no stories; rebuild it with "
                                "`python -m alignx_demo precompute`."))
            return
        gr.Markdown("Each story is a real run of this model, stored when the app's files were built; the sentence under "
                    "it says what the run did, computed from the run itself. **Replay** draws it again token by token — "
                    "no typing needed.", elem_classes=["ax-caption"])
        buttons = []
        with gr.Row(equal_height=True):
            for story in stories:
                with gr.Column(min_width=220):
                    gr.Markdown(f"**{_text(story['title'])}** — {_text(story['label'])}", elem_classes=["ax-caption"])
                    buttons.append(gr.Button("▶ Replay", size="sm", elem_id=f"story-{story['key']}"))
        first = stories[0]
        initial = frame(first, None)
        text = gr.Markdown(story_markdown(first), elem_id="story-stage")
        captions, panels = [], []
        with gr.Row():
            for i in range(RUNS):
                with gr.Column(min_width=260):
                    captions.append(gr.Markdown(initial[i], elem_id=f"story-caption-{i}"))
                    panels.append(gr.HTML(initial[RUNS + i], elem_id=f"story-run-{i}"))
        plot = gr.Plot(shares_plot(first), show_label=False, elem_id="story-shares", elem_classes=["ax-plot"])
        for story, button in zip(stories, buttons):
            def play(story: dict[str, Any] = story) -> Iterator[tuple[Any, ...]]:
                yield from replay(story)

            button.click(play, outputs=[text, *captions, *panels, plot], **REPLAY)

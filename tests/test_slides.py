"""Slide exports (`ui.slides`) on synthetic traces, no model: the HTML escapes every string it embeds,
keeps one chip (with its hover) per token and inlines plotly.js once; the PNG is as wide as designed and
shows the chips' colours, side by side or in a grid; `write_slides` writes both files. One browser test
opens an export offline in headless Chromium (skipped without a browser)."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from alignx_demo.config import AXES
from alignx_demo.screenshots import browser_problem, chromium, no_alert, wait_for
from alignx_demo.ui.exports import PREFIX
from alignx_demo.ui.plots import shares_figure, weights_figure
from alignx_demo.ui.slides import PNG_WIDTH, slides_html, slides_png, write_slides
from alignx_demo.ui.theme import AXIS_COLORS, mix_color, muted

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '" onerror=alert(1) x="'
HOSTILE = f"{SCRIPT} <img src=x onerror=alert(1)>"
MIX = (0.5, 0.5, 0.0)
"""Weights of the newline token: their colour is no axis colour, so its pixels can only come from a chip."""
TEXTS = [("Tell", (0.2, 0.7, 0.1), True), (" me", (0.3, 0.3, 0.4), True), (" Sure", (1.0, 0.0, 0.0), False),
         ("\n", MIX, False), (SCRIPT, (0.2, 0.3, 0.5), False), (ATTRIBUTE, (0.0, 0.0, 1.0), False)]


def token(text: str, position: int, weights: tuple[float, float, float], is_prompt: bool) -> dict[str, Any]:
    named = dict(zip(AXES, weights))
    return {"text": text, "id": position, "position": position, "is_prompt": is_prompt, "weights": named,
            "layers": [list(weights), list(weights)], "entropy": 0.5, "top_expert": max(named, key=named.get)}


def make_trace(prompt: str = HOSTILE, texts: list[tuple[str, tuple[float, float, float], bool]] = TEXTS,
               model: str = f"tiny {SCRIPT}", routing: dict[str, Any] | None = None) -> dict[str, Any]:
    tokens = [token(text, i, weights, is_prompt) for i, (text, weights, is_prompt) in enumerate(texts)]
    return {
        "schema": "alignx-trace/1", "prompt": prompt, "model": model, "axes": list(AXES),
        "settings": {"generation": {"max_new_tokens": 16, "do_sample": True, "temperature": 0.7, "top_p": 0.9,
                                    "seed": 7},
                     "routing": routing or {"mode": "soft", "calibrated": True, "axis_prior": None, "prior_blend": 1.0},
                     "calibration": None},
        "notices": [f"notice {SCRIPT}"], "finish_reason": "length",
        "text": "".join(t["text"] for t in tokens if not t["is_prompt"]), "tokens": tokens,
    }


class Page(HTMLParser):
    """Every element (tag, attributes), the text of each script, the page title and the text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.title, self.text, self._in = "", "", ""
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self._in = tag
        if tag == "script":
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in = ""

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts[-1] += data
        elif self._in == "title":
            self.title += data
        self.text += data

    def chips(self) -> list[dict[str, str | None]]:
        return [a for tag, a in self.elements if tag == "span" and "ax-chip" in (a.get("class") or "").split()]


def mask(png: bytes, color: str) -> np.ndarray:
    """Where a PNG's pixels are exactly `color` (a hex colour): a height × width boolean array."""
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    return (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) == rgb).all(axis=-1)


def test_html_keeps_hostile_text_as_text():
    page = Page(slides_html([(f"label {SCRIPT}", make_trace())], f"title {SCRIPT}", f"settings {HOSTILE}",
                            notice=f"notice {HOSTILE}"))
    assert not [(tag, name) for tag, attrs in page.elements for name in attrs if name.lower().startswith("on")]
    assert not [s for s in page.scripts if "alert" in s] and "img" not in {tag for tag, _ in page.elements}
    assert page.title == f"title {SCRIPT}"
    for text in (f"label {SCRIPT}", HOSTILE, f"settings {HOSTILE}", f"notice {HOSTILE}", f"tiny {SCRIPT}",
                 f"notice {SCRIPT}"):
        assert text in page.text


def test_html_one_chip_per_token_with_hover():
    trace = make_trace()
    chips = Page(slides_html([("Calibrated", trace)], "t")).chips()
    assert len(chips) == len(trace["tokens"])
    assert all((c.get("title") or "").count("per layer") == 1 for c in chips)
    assert chips[0]["title"].startswith("prompt token #0") and chips[-1]["title"].startswith("generated token #5")


@pytest.mark.parametrize("n", [1, 2, 4])
def test_html_panels_show_label_settings_weights_model(n):
    routing = {"mode": "top1", "calibrated": False, "axis_prior": [1.0, 0.0, 0.0], "prior_blend": 0.5}
    panels = [(f"Preset {i}", make_trace(routing=routing, model=f"model-{i}")) for i in range(n)]
    panels[0][1]["run_weights"] = {"helpful": 0.3, "harmless": 0.2, "honest": 0.5}
    page = Page(slides_html(panels, "t"))
    assert sum(tag == "article" for tag, _ in page.elements) == n
    assert [a["class"] for tag, a in page.elements if tag == "section"] == [f"sl-panels sl-cols-{1 if n == 1 else 2}"]
    assert len(page.chips()) == n * len(TEXTS)
    for i in range(n):
        assert f"Preset {i}" in page.text and f"model-{i}" in page.text
    assert "uncalibrated · top1 · prior 1.00/0.00/0.00 (blend 0.50)" in page.text
    assert "≤16 new tokens · seed 7 · sampling T=0.7, top-p 0.9" in page.text
    assert "Run weights: Helpful 30% · Harmless 20% · Honest 50%" in page.text
    assert "exported from AlignX Demo on" in page.text and "Helpful expert" in page.text


def test_html_figures_offline_and_plotly_once():
    trace = make_trace()
    one = slides_html([("a", trace)], "t", figures=[weights_figure(trace)])
    figures = [weights_figure(trace), shares_figure({"a": dict(zip(AXES, MIX))}, "x")]
    two = slides_html([("a", trace)], "t", figures=figures)
    for text, figures in ((one, 1), (two, 2)):
        page = Page(text)
        assert text.count("Plotly.newPlot") == figures
        assert text.count("* plotly.js v") == 1  # the bundle's header, inlined once
        assert not [a for tag, a in page.elements if tag == "script" and a.get("src")]
        assert "cdn.plot.ly/plotly" not in text  # the bundle names cdn.plot.ly only as its map-data default
        assert "<script>alert" not in text
    assert len(two) - len(one) < 100_000


def png_of(panels: list[tuple[str, dict[str, Any]]]) -> Image.Image:
    png = slides_png(panels, "Slides")
    Image.open(io.BytesIO(png)).verify()
    return Image.open(io.BytesIO(png))


@pytest.mark.parametrize("n", [1, 2, 4])
def test_png_width_and_chip_colours(n):
    png = slides_png([(f"Panel {i}", make_trace()) for i in range(n)], f"Title {SCRIPT}", "line", notice="careful")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width == PNG_WIDTH
    chip = mask(png, mix_color(dict(zip(AXES, MIX))))
    assert chip.sum() > 200 * n
    assert mask(png, muted(mix_color(dict(zip(AXES, (0.2, 0.7, 0.1)))))).sum() > 200 * n
    left, right = chip[:, :PNG_WIDTH // 2].any(), chip[:, PNG_WIDTH // 2:].any()
    assert (left, right) == ((True, False) if n == 1 else (True, True))
    empty = slides_png([(f"Panel {i}", make_trace(texts=[])) for i in range(n)], "t")
    helpful = AXIS_COLORS["helpful"]
    assert mask(png, helpful).sum() > mask(empty, helpful).sum() + 200 * n  # chips, beyond the legend's swatch


def test_png_grid_of_four_is_taller_than_two():
    two = png_of([(f"P{i}", make_trace()) for i in range(2)])
    four = png_of([(f"P{i}", make_trace()) for i in range(4)])
    assert four.width == two.width == PNG_WIDTH and four.height > two.height * 1.5


def test_png_newline_breaks_the_line():
    after = (0.0, 0.2, 0.8)
    png = slides_png([("a", make_trace(texts=[("one", MIX, False), ("\n", MIX, False), ("two", after, False)]))], "t")
    newline_rows = mask(png, mix_color(dict(zip(AXES, MIX)))).any(axis=1).nonzero()[0]
    below_rows = mask(png, mix_color(dict(zip(AXES, after)))).any(axis=1).nonzero()[0]
    assert len(newline_rows) and below_rows.min() > newline_rows.max()


def test_png_long_empty_and_unicode_runs():
    long = make_trace(texts=[(f" word{i}", (0.1, 0.1, 0.8), False) for i in range(3000)])
    short = make_trace(texts=[(f" word{i}", (0.1, 0.1, 0.8), False) for i in range(600)])
    assert png_of([("long", long)]).height == png_of([("short", short)]).height < 1200
    assert png_of([("empty", make_trace(prompt="", texts=[]))]).width == PNG_WIDTH
    unicode = make_trace(prompt="Ünïcödé ✓ 日本語 🙂 " * 40,
                         texts=[("日本", MIX, False), ("🙂", MIX, False), ("", MIX, False)])
    assert png_of([("Ünïcödé ✓", unicode)]).width == PNG_WIDTH


def test_write_slides_writes_both_files():
    trace = make_trace()
    html_path, png_path = map(Path, write_slides("alignx-slides", [("a", trace), ("b", trace)], "t",
                                                 figures=[weights_figure(trace)], notice="n"))
    assert html_path.parent == png_path.parent and html_path.parent.name.startswith(PREFIX)
    assert (html_path.name, png_path.name) == ("alignx-slides.html", "alignx-slides.png")
    assert "Plotly.newPlot" in html_path.read_text(encoding="utf-8")
    assert Image.open(png_path).width == PNG_WIDTH


INJECTED = ("return document.querySelectorAll('img[src=\"x\"], [onerror], [onload]').length"
            " + [...document.scripts].filter(s => s.textContent.trim() === 'alert(1)').length")
"""Elements the hostile text would create if any of it were rendered as HTML (the figure's script holds the
token texts as JSON data, so only a script that is nothing but the payload counts)."""
FETCHED = "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('file:'))"


@pytest.mark.slow
@pytest.mark.skipif(browser_problem() is not None, reason=f"no headless browser: {browser_problem()}")
def test_export_opens_offline_in_chromium(tmp_path):
    trace = make_trace()
    path = tmp_path / "slides.html"
    path.write_text(slides_html([("Calibrated", trace), ("Uncalibrated", trace)], HOSTILE, HOSTILE,
                                figures=[weights_figure(trace)], notice=HOSTILE), encoding="utf-8")
    with chromium() as driver:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                               {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        driver.get(path.as_uri())
        wait_for(driver, lambda: driver.execute_script("return document.querySelectorAll('.plotly .main-svg').length"),
                 timeout=30, what="the plot drawn")
        assert no_alert(driver) and driver.execute_script(INJECTED) == 0
        assert driver.execute_script(FETCHED) == []
        assert driver.execute_script("return document.querySelectorAll('.ax-chip').length") == 2 * len(TEXTS)
        assert driver.title == HOSTILE

"""The app in a real headless Chromium: load, generate, see chips, switch tabs, screenshot every tab,
and check that typed HTML shows as text and runs nothing, on the page and in the exported traces; that
Stop ends a run with its own summary, plots and downloads; that a preset runs when clicked; that a story
replays, a run is attributed (chip hovers and the bar chart), a saved trace loads and diffs against a new
run, and a misrouted prompt of the routing analysis opens in Live routing; that every tab is reachable and
tables break only between words at phone width; and that chip text meets WCAG AA in the light and the
dark theme.

Skips only when Chromium, its driver or selenium is absent (CI installs them: see .ci/run).
Screenshots go to a temporary folder, or to $ALIGNX_SCREENSHOTS when set; the README's
screenshots are taken with the real model by `python -m alignx_demo.screenshots`.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from alignx_demo.ui.exports import tokens_from_csv
from alignx_demo.screenshots import (
    TABLE_ROWS,
    TABS,
    XSS_PROMPT,
    browser_problem,
    chromium,
    click,
    download,
    no_alert,
    open_tab,
    run_live,
    tour,
    type_into,
    viewport,
    wait_for,
)
from alignx_demo.ui.theme import contrast

EXPORT_PROMPT = f"{XSS_PROMPT} <script>alert(2)</script>"
INJECTED = ("return document.querySelectorAll('img[src=\"x\"], [onerror], [onload]').length"
            " + [...document.scripts].filter(s => s.textContent.includes('alert(')).length")
"""Elements the hostile prompt would create if any of it were rendered as HTML."""

pytestmark = pytest.mark.skipif(browser_problem() is not None, reason=f"no headless browser: {browser_problem()}")


SLOW = {"seconds": 0.0}
"""Seconds each forward of the served model waits; while set, the model also never ends a run with eos, so a
Stop test always finds a run still going (a quickly trained model can emit eos a few tokens in)."""
"""Seconds each forward pass of the served model sleeps (set by the Stop test, so that there is a run to stop)."""


@pytest.fixture(scope="module")
def app_url(trained_run, trained_precomputed):
    from alignx_demo.modeling import load_mocae
    from alignx_demo.serving import ModelContext
    from alignx_demo.ui.app import LAUNCH_KWARGS, build_demo

    run, _ = trained_run
    loaded = load_mocae(run, load_in_4bit=False)
    forward = loaded.mocae.model.forward

    eos = sorted({loaded.tokenizer.eos_token_id, *_ids(loaded.mocae.model.generation_config.eos_token_id)} - {None})

    def slowed(*args, **kwargs):
        time.sleep(SLOW["seconds"])
        out = forward(*args, **kwargs)
        if SLOW["seconds"]:
            out.logits[..., eos] = float("-inf")
        return out

    loaded.mocae.model.forward = slowed
    demo = build_demo(ModelContext(loaded), trained_precomputed)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True, **LAUNCH_KWARGS)
    yield demo.local_url
    demo.close()


def _ids(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


@pytest.fixture(scope="module")
def driver():
    with chromium() as d:
        yield d


def test_every_tab_works_and_is_screenshotted(app_url, driver, tmp_path):
    out = Path(os.environ.get("ALIGNX_SCREENSHOTS") or tmp_path / "screenshots")
    report = tour(driver, app_url, out, "Is it true that we only use ten percent of our brains?")
    assert report["live"]["chips"] > report["live"]["first_chips"] or report["live"]["chips"] > 0
    assert report["tabs"] == list(TABS.values())
    names = sorted(p.name for p in report["screenshots"])
    assert names == sorted([*(f"{t}.png" for t in TABS), "export-presets.png"])
    for path in report["screenshots"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert set(report["tab_render_s"]) == {"collapse", "benchmarks", "about"}  # timings are the benchmark's, not asserted
    analysis = report["analysis"]  # the tour uploaded a prompt file with one bad row: the sentence names it, the rest is analysed
    assert "Analysed 3 of 4 rows of tour-prompts.csv" in analysis["summary"]  # 4 given: 3 analysed, 1 rejected
    assert "Row 4 (line 5): axis 'sideways' is not one of helpful, harmless, honest" in analysis["summary"]
    assert analysis["rows"] or "0 misrouted" in analysis["summary"]


def test_typed_html_is_shown_as_text_and_runs_nothing(app_url, driver):
    driver.get(app_url)
    result = run_live(driver, XSS_PROMPT)
    assert no_alert(driver)
    assert result["images_in_chips"] == 0
    assert XSS_PROMPT in result["text"].replace("\u21b5\n", "").replace("\n", "")
    assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0


def _both(found: list) -> list | None:
    return found if len(found) == 2 else None


def test_exported_traces_run_nothing_when_downloaded_or_opened(app_url, driver, tmp_path):
    downloads = tmp_path / "downloads"
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.get(app_url)
    run_live(driver, EXPORT_PROMPT)
    links = wait_for(driver, lambda: _both(driver.find_elements("css selector", "#live-csv a[href], #live-json a[href]")),
                     60, "the CSV and JSON download links")
    hrefs = [link.get_attribute("href") for link in links]
    for link in links:  # download them as the page offers them
        driver.execute_script("arguments[0].click();", link)
    expected = [downloads / "alignx-trace.csv", downloads / "alignx-trace.json"]  # complete once renamed from .crdownload
    csv_path, json_path = wait_for(driver, lambda: _both([p for p in expected if p.exists()]), 60, "both downloads")
    time.sleep(0.5)
    assert no_alert(driver) and driver.execute_script(INJECTED) == 0
    assert json.loads(json_path.read_text(encoding="utf-8"))["prompt"] == EXPORT_PROMPT
    prompt_tokens = [t["text"] for t in tokens_from_csv(csv_path.read_text(encoding="utf-8")) if t["is_prompt"]]
    assert EXPORT_PROMPT in "".join(prompt_tokens)
    for href in hrefs:  # and open them in the browser, as someone following the link would
        driver.get(href)
        time.sleep(0.5)
        assert no_alert(driver), f"an alert opened on {href}"
        assert driver.execute_script(INJECTED) == 0
        if driver.current_url == href:  # shown, not downloaded: as text, never as a page
            assert driver.execute_script("return document.contentType") != "text/html"


def _css(driver, selector: str) -> list:
    return driver.find_elements("css selector", selector)


def _text(driver, selector: str) -> str:
    found = _css(driver, selector)
    return found[0].text if found else ""


def _page_trace(driver) -> dict:
    """The trace the page offers as its JSON download."""
    link = wait_for(driver, lambda: _css(driver, "#live-json a[href]"), 30, "the JSON download")[0]
    with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as answer:
        return json.loads(answer.read().decode("utf-8"))


HEATMAP_COLUMNS = "return document.querySelector('#live-heatmap .js-plotly-plot').data[0].z[0].length"
WEIGHTS_POINTS = "return document.querySelector('#live-weights .js-plotly-plot').data[0].x.length"


def test_stop_ends_the_run_with_its_own_summary_plots_and_downloads(app_url, driver):
    driver.get(app_url)
    run_live(driver, "Tell me about bread.")  # a finished run first: its plots and downloads must not survive a stopped one
    SLOW["seconds"] = 0.15
    try:
        for prompt, when in (("Stop me right away.", "right after Generate"), ("Stop me in the middle.", "mid-run")):
            type_into(driver, "live-prompt", prompt)
            click(driver, "live-generate")
            if when == "right after Generate":
                # started: the page's own "Generating…" or, once the first update (the prompt) is in, "running…"
                wait_for(driver, lambda: any(w in _text(driver, "#live-summary") for w in ("Generating", "running…")), 30,
                         "the run to start")
            else:
                wait_for(driver, lambda: _css(driver, "#live-chips .ax-chip:not(.ax-prompt)"), 60, "a generated token")
            click(driver, "live-stop")
            wait_for(driver, lambda: "finish: stopped" in _text(driver, "#live-summary"), 30, f"Stop {when} to show")
            trace = wait_for(driver, lambda: (t := _page_trace(driver))["prompt"] == prompt and t, 30, "the stopped run's download")
            chips = _css(driver, "#live-chips .ax-chip")
            generated = sum(not t["is_prompt"] for t in trace["tokens"])
            assert trace["finish_reason"] == "stopped" and generated < 64, when
            assert f"{generated} generated + {len(trace['tokens']) - generated} prompt tokens" in _text(driver, "#live-summary")
            assert len(chips) == len(trace["tokens"]), when
            wait_for(driver, lambda: driver.execute_script(HEATMAP_COLUMNS) == len(trace["tokens"]), 30, "the heatmap of the stopped run")
            assert driver.execute_script(WEIGHTS_POINTS) == len(trace["tokens"]), when
    finally:
        SLOW["seconds"] = 0.0


def test_an_empty_prompt_is_refused_in_one_sentence_and_the_last_run_stays(app_url, driver):
    driver.get(app_url)
    run_live(driver, "Tell me about bread.")
    summary, chips = _text(driver, "#live-summary"), len(_css(driver, "#live-chips .ax-chip"))
    type_into(driver, "live-prompt", "   ")
    click(driver, "live-generate")
    wait_for(driver, lambda: "the prompt is empty" in driver.find_element("tag name", "body").text, 30, "the one-sentence refusal")
    time.sleep(1.0)  # a run that started anyway would have cleared the panes by now
    assert _text(driver, "#live-summary") == summary and "Generating" not in summary  # nothing lost, nothing stuck
    assert len(_css(driver, "#live-chips .ax-chip")) == chips


def test_a_preset_button_runs_the_preset(app_url, driver):
    driver.get(app_url)
    wait_for(driver, lambda: _css(driver, "#live-prompt textarea"), 60, "the page to load")
    open_tab(driver, "tradeoff")
    boxes = [b.get_attribute("value") for b in _css(driver, "#tab-tradeoff input[type='number']")]
    assert "0.33" in boxes and not any(len(v) > 5 for v in boxes), boxes  # readable precision, never 0.333333
    click(driver, "tradeoff-too-harmless")
    wait_for(driver, lambda: "axis prior 0.00/1.00/0.00" in _text(driver, "#tradeoff-summary")
             and "finish: running" not in _text(driver, "#tradeoff-summary"), 60, "the preset's run")
    assert _css(driver, "#tradeoff-chips .ax-chip")


EFFECT_BARS = "return document.querySelector('#live-effects .js-plotly-plot').data.map(t => [t.type, t.x.length])"
SETTLE_LINES = "return document.querySelector('#live-settle-plot .js-plotly-plot').data.length"


def test_stories_attribution_saved_traces_and_analysis_rows(app_url, driver, tmp_path):
    driver.get(app_url)
    wait_for(driver, lambda: _css(driver, "#story-run-0 .ax-chip"), 60, "the first story, shown before anyone types")
    for key in ("honesty", "refusal"):
        click(driver, f"story-{key}")
        wait_for(driver, lambda: "— …" in _text(driver, "#story-caption-0"), 30, f"the {key} story replaying")
        wait_for(driver, lambda: "— …" not in _text(driver, "#story-caption-0") and _text(driver, "#story-caption-1"), 30,
                 f"the {key} story's end")
    stage = _text(driver, "#story-stage")
    assert "Prompt:" in stage and ("refuses" in stage or "does not show" in stage)
    assert len(_css(driver, "#story-shares .js-plotly-plot")) == 1

    run_live(driver, "Is the moon made of cheese?")  # the settle curve follows every finished run
    wait_for(driver, lambda: "routing commits to" in _text(driver, "#live-settle"), 60, "the settle sentence")
    assert driver.execute_script(SETTLE_LINES) == 3
    trace = _page_trace(driver)
    generated = sum(not t["is_prompt"] for t in trace["tokens"])
    click(driver, "live-attribute")
    wait_for(driver, lambda: "top-effect expert in" in _text(driver, "#live-attribution")
             or "no token has a top-effect expert" in _text(driver, "#live-attribution"), 60, "the attribution")
    hovers = [c.get_attribute("title") for c in _css(driver, "#live-chips .ax-chip:not(.ax-prompt)")]
    assert len(hovers) == generated and all("counterfactual attribution" in h and "effect" in h for h in hovers)
    assert driver.execute_script(EFFECT_BARS) == [["bar", generated]] * 3

    saved = tmp_path / "saved-trace.json"
    saved.write_text(json.dumps(trace), encoding="utf-8")
    opener = _css(driver, "#live-saved .label-wrap")[0]  # open the accordion, as a visitor would
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", opener)
    upload = wait_for(driver, lambda: _css(driver, "#live-trace-file input[type='file']"), 30, "the trace file input")[0]
    upload.send_keys(str(saved))
    wait_for(driver, lambda: "Loaded saved-trace.json" in _text(driver, "#live-trace-loaded"), 30, "the loaded trace")
    click(driver, "live-trace-diff")
    wait_for(driver, lambda: "Ran the saved prompt again" in _text(driver, "#live-diff-summary"), 60, "the diff")
    assert f"all {len(trace['tokens'])} tokens are the same" in _text(driver, "#live-diff-summary")  # greedy: the same run
    assert "differs at 0 of" in _text(driver, "#live-diff-summary") and not _css(driver, "#live-diff-chips .ax-flip")
    assert len(_css(driver, "#live-diff-chips .ax-chip")) == len(trace["tokens"])

    open_tab(driver, "analysis")
    rows = wait_for(driver, lambda: driver.execute_script(TABLE_ROWS, "analysis-misrouted"), 30, "the shipped slice's misrouted table")
    prompt = rows[0][2]
    cell = _css(driver, "#analysis-misrouted [data-testid='cell-0-2']")[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", cell)
    time.sleep(0.3)
    cell.click()  # a real pointer click: the table selects on pointer events, not on a scripted click()
    wait_for(driver, lambda: _tab_selected(driver, "live"), 30, "Live routing to open")
    wait_for(driver, lambda: _css(driver, "#live-prompt textarea")[0].get_attribute("value") == prompt, 30, "the prompt filled in")
    wait_for(driver, lambda: "finish: eos" in _text(driver, "#live-summary") or "finish: length" in _text(driver, "#live-summary"),
             60, "the misrouted prompt's run")
    assert no_alert(driver) and driver.execute_script(INJECTED) == 0


def _tab_selected(driver, tab: str) -> bool:
    return any(b.get_attribute("aria-selected") == "true" and b.text.strip() == TABS[tab] for b in _css(driver, "button[role='tab']"))


BROKEN_WORDS = """
const broken = [];
for (const cell of document.querySelectorAll(arguments[0])) {
  if (!cell.offsetParent) continue;
  const walk = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  for (let node = walk.nextNode(); node; node = walk.nextNode()) {
    for (const m of node.textContent.matchAll(/\\S+/g)) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const lines = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
      if (lines.size > 1) broken.push(m[0]);
    }
  }
}
return broken;
"""
"""Words (runs of non-space characters) in the matching cells that the browser split across lines."""
TOOLBAR_OVER_TITLE = """
const hits = [];
for (const plot of document.querySelectorAll(arguments[0] + ' .js-plotly-plot')) {
  const bar = plot.querySelector('.modebar'), title = plot.querySelector('.gtitle');
  if (!bar || !title || !plot.offsetParent) continue;
  const a = bar.getBoundingClientRect(), b = title.getBoundingClientRect();
  if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) hits.push(title.textContent);
}
return hits;
"""


def test_phone_width_every_tab_reachable_and_readable(app_url, driver):
    viewport(driver, 420, 900)  # a true 420 px viewport: a headless window cannot be narrower than 500 px
    try:
        driver.get(app_url)
        assert driver.execute_script("return window.innerWidth;") == 420
        run_live(driver, "Tell me about bread.")
        buttons = [b for b in _css(driver, "button[role='tab']") if b.is_displayed()]
        assert [b.text.strip() for b in buttons] == list(TABS.values())  # every tab shown and labelled, none in a menu
        assert all(b.rect["x"] >= 0 and b.rect["x"] + b.rect["width"] <= 420 for b in buttons)
        stems = driver.execute_script("return [...document.querySelectorAll('#live-csv .stem, #live-json .stem')]"
                                      ".map(e => [e.textContent, e.clientWidth, e.scrollWidth])")
        assert len(stems) == 2 and all(0 < width >= full for _, width, full in stems), stems  # file names not cut
        assert driver.execute_script(TOOLBAR_OVER_TITLE, "#tab-live") == []
        for tab in TABS:
            open_tab(driver, tab)
            assert driver.execute_script(BROKEN_WORDS, f"#tab-{tab} table th, #tab-{tab} table td") == [], tab
            assert driver.execute_script(TOOLBAR_OVER_TITLE, f"#tab-{tab}") == [], tab
    finally:
        viewport(driver, 1280, 1000)


CHIP_COLOURS = """
return [...document.querySelectorAll('#live-chips .ax-chip')].map(chip => {
  let opacity = 1;
  for (let e = chip; e; e = e.parentElement) opacity *= parseFloat(getComputedStyle(e).opacity);
  const style = getComputedStyle(chip);
  return [style.color, style.backgroundColor, opacity];
});
"""


def _hex(css_rgb: str) -> str:
    parts = css_rgb[css_rgb.index("(") + 1 : css_rgb.index(")")].split(",")
    assert len(parts) == 3, f"a translucent colour: {css_rgb}"
    return "#" + "".join(f"{int(float(v)):02x}" for v in parts)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_chip_text_contrast_meets_wcag_aa(app_url, driver, theme):
    driver.get(f"{app_url}?__theme={theme}")
    run_live(driver, "Is the moon made of cheese?")
    assert driver.execute_script("return document.body.classList.contains('dark')") == (theme == "dark")
    colours = driver.execute_script(CHIP_COLOURS)
    assert colours and all(opacity == 1 for *_, opacity in colours)  # opaque: the page behind never shows through
    worst = min(contrast(_hex(fg), _hex(bg)) for fg, bg, _ in colours)
    assert worst >= 4.5, f"lowest chip contrast {worst:.2f}:1 in the {theme} theme"


# the educator's page: links, exports for slides, the honest notice, the phone, Stop everywhere ----------------------

VIEWS = [(1280, "light"), (420, "dark")]
"""Each teaching check runs at desktop width in the light theme and at a true phone width in the dark one."""


def _open(driver, url: str, width: int, theme: str, query: str = "") -> None:
    viewport(driver, width, 1000 if width > 500 else 900)
    joiner = "&" if query else ""
    driver.get(f"{url}?{query}{joiner}__theme={theme}")


def _value(driver, elem_id: str) -> str:
    return wait_for(driver, lambda: _css(driver, f"#{elem_id} textarea, #{elem_id} input"), 30, elem_id)[0].get_attribute("value")


@pytest.mark.parametrize("width, theme", VIEWS)
def test_a_link_opens_its_tab_fills_it_and_runs_it(app_url, driver, width, theme):
    try:
        _open(driver, app_url, width, theme, "tab=trade-off&prompt=Name%20a%20fruit.&preset=too-harmless&tokens=6&seed=2&run=1")
        wait_for(driver, lambda: _tab_selected(driver, "tradeoff"), 30, "the linked tab")
        wait_for(driver, lambda: "axis prior 0.00/1.00/0.00" in _text(driver, "#tradeoff-summary")
                 and "finish: running" not in _text(driver, "#tradeoff-summary"), 60, "the linked run")
        assert _value(driver, "tradeoff-prompt") == "Name a fruit." and _css(driver, "#tradeoff-chips .ax-chip")
        click(driver, "tradeoff-copy-link")
        link = wait_for(driver, lambda: _value(driver, "tradeoff-link").startswith("http") and _value(driver, "tradeoff-link"),
                        30, "the copied link")
        assert "prompt=Name+a+fruit." in link and "harmless=1" in link and "tokens=6" in link and "run=" not in link
        driver.get(link)  # without run=1: the inputs are there, one click away, nothing has run
        wait_for(driver, lambda: _tab_selected(driver, "tradeoff") and _value(driver, "tradeoff-prompt") == "Name a fruit.", 30,
                 "the reopened link")
        time.sleep(1.0)
        assert not _css(driver, "#tradeoff-chips .ax-chip")
        click(driver, "tradeoff-run")
        wait_for(driver, lambda: "axis prior 0.00/1.00/0.00" in _text(driver, "#tradeoff-summary"), 60, "the one-click run")
        _open(driver, app_url, width, theme, "tab=live&tokens=100000&run=1")
        wait_for(driver, lambda: "This link cannot be opened: tokens must be from 1 to" in driver.find_element("tag name", "body").text,
                 30, "the one-sentence refusal")
        assert _tab_selected(driver, "live") and not _css(driver, "#live-chips .ax-chip:not(.ax-prompt)")
    finally:
        viewport(driver, 1280, 1000)


@pytest.mark.parametrize("width, theme", VIEWS)
def test_the_presets_export_for_slides_opens_offline_with_its_chips(app_url, driver, width, theme, tmp_path):
    try:
        _open(driver, app_url, width, theme)
        wait_for(driver, lambda: _css(driver, "#live-prompt textarea"), 60, "the page to load")
        open_tab(driver, "tradeoff")
        type_into(driver, "tradeoff-prompt", EXPORT_PROMPT)
        click(driver, "tradeoff-all")
        page = download(driver, "presets-html", tmp_path)
        picture = download(driver, "presets-png", tmp_path)
        table = download(driver, "presets-csv", tmp_path)
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert [row.split(",")[0] for row in table.read_text(encoding="utf-8").splitlines()[:1]] == ["run"]
        assert {"Too helpful", "Too harmless", "Too honest", "Just right"} <= {r.split(",")[0] for r in table.read_text().splitlines()}
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": 0,
                                                                     "uploadThroughput": 0})
        try:
            driver.get(page.as_uri())
            wait_for(driver, lambda: _css(driver, ".sl-figure .main-svg"), 30, "the embedded plot, offline")
            assert len(_css(driver, ".sl-panel")) == 4 and _css(driver, ".ax-chip")
            assert no_alert(driver) and driver.execute_script(INJECTED) == 0
            assert all(c.get_attribute("title") for c in _css(driver, ".ax-chip"))  # hover data kept
        finally:
            driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                                         "uploadThroughput": -1})
    finally:
        viewport(driver, 1280, 1000)


def _serve(loaded, artefacts):
    from alignx_demo.serving import ModelContext
    from alignx_demo.ui.app import LAUNCH_KWARGS, build_demo

    demo = build_demo(ModelContext(loaded), artefacts)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True, **LAUNCH_KWARGS)
    return demo


@pytest.mark.parametrize("width, theme", VIEWS)
def test_the_notice_shows_for_a_small_model_and_not_for_a_large_one(trained_run, driver, width, theme, monkeypatch):
    from alignx_demo.analysis.artefacts import Artefacts, model_fingerprint
    from alignx_demo.modeling import load_mocae
    from alignx_demo.ui import notice

    run, _ = trained_run
    loaded = load_mocae(run, load_in_4bit=False)
    helpful = {"n": 40, "on_topic": {"count": 7, "rate": 0.175, "interval": None}}
    measured = Artefacts(Path("."), {"answers": {"model_fingerprint": model_fingerprint(run),
                                                  "presets": {"just right": {"by_axis": {"helpful": helpful}}}}})
    demo = _serve(loaded, measured)
    try:
        _open(driver, demo.local_url, width, theme)
        shown = wait_for(driver, lambda: [e for e in _css(driver, "#tab-live .ax-worth") if e.is_displayed()], 60, "the notice")
        assert "only 18% of its calibrated answers to 40 everyday requests" in shown[0].text
        fg, bg = driver.execute_script(OWN_COLOURS, shown[0])
        assert contrast(_hex(fg), _hex(bg)) >= 4.5
    finally:
        demo.close()
    monkeypatch.setattr(notice, "LARGE", 1)  # a stand-in for a large base: unmeasured, as large as an assistant
    demo = _serve(loaded, Artefacts(Path(".")))
    try:
        _open(driver, demo.local_url, width, theme)
        wait_for(driver, lambda: _css(driver, "#live-prompt textarea"), 60, "the page to load")
        assert not _css(driver, ".ax-worth")
    finally:
        demo.close()
        viewport(driver, 1280, 1000)


OWN_COLOURS = """
const e = arguments[0]; let b = e;
while (b && getComputedStyle(b).backgroundColor.match(/rgba\\(.*, 0\\)|transparent/)) b = b.parentElement;
return [getComputedStyle(e).color, b ? getComputedStyle(b).backgroundColor : 'rgb(255, 255, 255)'];
"""
"""An element's text colour and the first opaque background behind it."""
CELL_NUMBERS = """
return [...document.querySelectorAll(arguments[0] + ' .js-plotly-plot')].flatMap(plot => {
  const texts = [...plot.querySelectorAll('.annotation-text')];
  return texts.map(t => [getComputedStyle(t).fill, t.textContent]);
});
"""


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_on_a_phone_the_prompt_comes_first_and_everything_reads(app_url, driver, theme):
    try:
        _open(driver, app_url, 420, theme)
        assert driver.execute_script("return window.innerWidth;") == 420
        prompt = wait_for(driver, lambda: _css(driver, "#live-prompt textarea"), 60, "the prompt")[0]
        assert prompt.rect["y"] < _css(driver, "#stories")[0].rect["y"]  # the prompt before the stories
        for selector in ("#live-intro", "#live-summary", ".ax-legend"):
            for element in _css(driver, selector)[:1]:
                fg, bg = driver.execute_script(OWN_COLOURS, element)
                assert contrast(_hex(fg), _hex(bg)) >= 4.5, (selector, fg, bg)
        open_tab(driver, "analysis")
        combos = wait_for(driver, lambda: [c for c in _css(driver, "#tab-analysis input[role='combobox']") if c.is_displayed()], 30,
                          "a dropdown")
        for combo in combos:  # the text stops before the arrow
            text_right, arrow_left = driver.execute_script(
                "const i = arguments[0], s = getComputedStyle(i), a = i.parentElement.parentElement.querySelector('.icon-wrap');"
                "return [i.getBoundingClientRect().right - parseFloat(s.paddingRight), a.getBoundingClientRect().left];", combo)
            assert text_right <= arrow_left + 1
        open_tab(driver, "benchmarks")
        assert any(h.is_displayed() for h in _css(driver, ".ax-scroll-hint"))  # wide tables say they scroll
    finally:
        viewport(driver, 1280, 1000)


def test_stop_ends_a_comparison_and_the_presets_on_the_page(app_url, driver):
    driver.get(app_url)
    wait_for(driver, lambda: _css(driver, "#live-prompt textarea"), 60, "the page to load")
    SLOW["seconds"] = 0.15
    try:
        open_tab(driver, "compare")
        click(driver, "compare-run")
        wait_for(driver, lambda: _css(driver, "#compare-calibrated .ax-chip:not(.ax-prompt)"), 60, "a generated token")
        click(driver, "compare-stop")
        wait_for(driver, lambda: _text(driver, "#compare-summary").startswith("Stopped"), 30, "the stopped comparison")
        open_tab(driver, "tradeoff")
        click(driver, "tradeoff-all")
        wait_for(driver, lambda: _css(driver, "#preset-too-helpful .ax-chip:not(.ax-prompt)"), 60, "the first preset's tokens")
        click(driver, "tradeoff-stop")
        wait_for(driver, lambda: "not run: stopped" in _text(driver, "#preset-just-right"), 30, "the presets stopped")
    finally:
        SLOW["seconds"] = 0.0

"""The app in a real headless Chromium: load, generate, see chips, switch tabs, screenshot every tab,
and check that typed HTML shows as text and runs nothing, on the page and in the exported traces.

Skips only when Chromium, its driver or selenium is absent (CI installs them: see .ci/run).
Screenshots go to a temporary folder, or to $ALIGNX_SCREENSHOTS when set; the README's
screenshots are taken with the real model by `python -m alignx_demo.ui.screenshots`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from app_fixtures import quick_precomputed, quick_run

from alignx_demo.ui.exports import tokens_from_csv
from alignx_demo.ui.screenshots import TABS, XSS_PROMPT, browser_problem, chromium, no_alert, run_live, tour, wait_for

EXPORT_PROMPT = f"{XSS_PROMPT} <script>alert(2)</script>"
INJECTED = ("return document.querySelectorAll('img[src=\"x\"], [onerror], [onload]').length"
            " + [...document.scripts].filter(s => s.textContent.includes('alert(')).length")
"""Elements the hostile prompt would create if any of it were rendered as HTML."""

pytestmark = pytest.mark.skipif(browser_problem() is not None, reason=f"no headless browser: {browser_problem()}")


@pytest.fixture(scope="module")
def app_url():
    from alignx_demo.modeling import load_mocae
    from alignx_demo.serving import ModelContext
    from alignx_demo.ui.app import LAUNCH_KWARGS, build_demo

    run, _ = quick_run()
    demo = build_demo(ModelContext(load_mocae(run, load_in_4bit=False)), quick_precomputed())
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True, **LAUNCH_KWARGS)
    yield demo.local_url
    demo.close()


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
    assert names == sorted(f"{t}.png" for t in TABS)
    for path in report["screenshots"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert set(report["tab_render_s"]) == {"collapse", "benchmarks", "about"}  # timings are the benchmark's, not asserted


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
